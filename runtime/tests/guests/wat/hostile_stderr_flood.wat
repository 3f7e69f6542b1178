;; Class: host calls that ignored the deadline and the caps. One fd_write to stderr of a
;; million iovecs of 16 MiB each (16 TiB): only the stderr cap's worth may be copied. The guest
;; then answers normally ("ok"), quickly.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 256)
  (data (i32.const 64) "Content-Type: text/plain\n\nok")
  (func (export "_start")
    (local $i i32)
    ;; iovecs at 1 MiB: a million of (ptr 0, len 16 MiB), 8 MiB of them.
    (loop $fill
      (i32.store (i32.add (i32.const 1048576) (i32.mul (local.get $i) (i32.const 8))) (i32.const 0))
      (i32.store (i32.add (i32.const 1048580) (i32.mul (local.get $i) (i32.const 8))) (i32.const 16777216))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const 1000000))))
    (drop (call $fd_write (i32.const 2) (i32.const 1048576) (i32.const 1000000) (i32.const 8)))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 28))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
