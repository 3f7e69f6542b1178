;; Class: wasix host waits the interrupt cannot end. A futex wait with no timeout on a value
;; no other thread will ever change: on the wasix host it must end at the request's deadline
;; (504), not hold its thread forever.
(module
  (import "wasix_32v1" "futex_wait" (func $futex_wait (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; futex at 0 holds 0 and we expect 0; the timeout option at 16 is zero: None.
    (drop (call $futex_wait (i32.const 0) (i32.const 0) (i32.const 16) (i32.const 64)))))
