;; Class: tables sized by the guest. table.grow by 2^32-1 and then by 10 million elements must
;; both fail (-1) instead of allocating gigabytes on the host; the guest answers "ok" if so.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (table $t 1 funcref)
  (data (i32.const 64) "Content-Type: text/plain\n\nok")
  (data (i32.const 128) "Content-Type: text/plain\n\nno")
  (func (export "_start")
    (local $refused i32)
    (local.set $refused (i32.and
      (i32.eq (table.grow $t (ref.null func) (i32.const -1)) (i32.const -1))
      (i32.eq (table.grow $t (ref.null func) (i32.const 10000000)) (i32.const -1))))
    (i32.store (i32.const 0) (select (i32.const 64) (i32.const 128) (local.get $refused)))
    (i32.store (i32.const 4) (i32.const 28))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
