;; Class: the CGI head split across writes. "Content-Type: text/plain\nX-" then
;; "Foo: bar\n\nhello": the response has the header X-Foo: bar and the body "hello".
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "Content-Type: text/plain\nX-")
  (data (i32.const 128) "Foo: bar\n\nhello")
  (func $put (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (call $put (i32.const 64) (i32.const 27))
    (call $put (i32.const 128) (i32.const 15))))
