;; A CGI head of 69,993 bytes (one header line, then the blank line), past the 64 KiB a head
;; may take: the request fails with 502. The guest then ends normally.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 64) "X-Big: ")
  (func (export "_start")
    ;; 64..70055: "X-Big: " then 'a's; then "\n\n" and a body.
    (memory.fill (i32.const 71) (i32.const 97) (i32.const 69984))
    (i32.store16 (i32.const 70055) (i32.const 2570))
    (i32.store (i32.const 70057) (i32.const 0x0a6b6f))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 69996))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
