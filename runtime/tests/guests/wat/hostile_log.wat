;; Tries to flood and forge the node's log: 100 fd_write calls whose iovec array lies outside
;; memory (the host answers EFAULT; wasmer warns on each such read), then stderr text holding a
;; newline, a forged request log line and a terminal escape, then a valid response.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "oops\n2026-01-01T00:00:00.000000Z  INFO outpost::request: tenant=victim status=200 forged\1b[2J")
  (data (i32.const 512) "Content-Type: text/plain\n\nlogged\n")
  (func (export "_start")
    (local $i i32)
    (loop $flood
      (drop (call $fd_write (i32.const 1) (i32.const 0x20000) (i32.const 1) (i32.const 8)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $flood (i32.lt_u (local.get $i) (i32.const 100))))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 92))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 0) (i32.const 512))
    (i32.store (i32.const 4) (i32.const 33))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
