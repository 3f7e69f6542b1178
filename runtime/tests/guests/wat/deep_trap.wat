;; Recurses 20,000 calls deep, then traps: wasmer captures a backtrace of every frame on the
;; guest's stack as it raises the trap, host code that takes the unwinder's lock, long enough for
;; a deadline's interrupt to land in it.
(module
  (memory (export "memory") 1)
  (func $down (param $n i32)
    (if (local.get $n)
      (then (call $down (i32.sub (local.get $n) (i32.const 1)))))
    (unreachable))
  (func (export "_start") (call $down (i32.const 20000))))
