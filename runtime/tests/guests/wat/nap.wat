;; Sleeps 50 ms in poll_oneoff, then answers "napped": a guest whose host call waits.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 256) "Content-Type: text/plain\n\nnapped")
  (func (export "_start")
    ;; subscription at 0: userdata 0, tag 0 (clock), clock id 0, timeout 50 ms, flags 0
    (i64.store (i32.const 24) (i64.const 50000000))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
    (i32.store (i32.const 192) (i32.const 256))
    (i32.store (i32.const 196) (i32.const 32))
    (drop (call $fd_write (i32.const 1) (i32.const 192) (i32.const 1) (i32.const 200)))))
