;; Class: host memory and work sized by the guest. fd_write, fd_read, poll_oneoff and
;; random_get with counts and lengths far past the guest's memory: each must fail with EFAULT
;; at once. The guest answers "ok" only if all four did.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "Content-Type: text/plain\n\nok")
  (data (i32.const 128) "Content-Type: text/plain\n\nno")
  (func (export "_start")
    (local $all i32)
    (local.set $all (i32.and
      (i32.and
        (i32.eq (call $fd_write (i32.const 2) (i32.const 0) (i32.const 0x7fffffff) (i32.const 8)) (i32.const 21))
        (i32.eq (call $fd_read (i32.const 0) (i32.const 0) (i32.const 0x7fffffff) (i32.const 8)) (i32.const 21)))
      (i32.and
        (i32.eq (call $poll (i32.const 0) (i32.const 0) (i32.const 0x7fffffff) (i32.const 8)) (i32.const 21))
        (i32.eq (call $random (i32.const 0) (i32.const -1)) (i32.const 21)))))
    (i32.store (i32.const 0) (select (i32.const 64) (i32.const 128) (local.get $all)))
    (i32.store (i32.const 4) (i32.const 28))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
