;; Class: host calls that ignored the deadline and the caps. After a valid head, one fd_write
;; to stdout of a million iovecs of 16 MiB each: the response cap stops it after the cap's
;; worth (500, limit=response_body), never 16 TiB of copying.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 256)
  (data (i32.const 64) "Content-Type: text/plain\n\n")
  (func (export "_start")
    (local $i i32)
    (i32.store (i32.const 1048576) (i32.const 64))
    (i32.store (i32.const 1048580) (i32.const 26))
    (local.set $i (i32.const 1))
    (loop $fill
      (i32.store (i32.add (i32.const 1048576) (i32.mul (local.get $i) (i32.const 8))) (i32.const 0))
      (i32.store (i32.add (i32.const 1048580) (i32.mul (local.get $i) (i32.const 8))) (i32.const 16777216))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const 1000000))))
    (drop (call $fd_write (i32.const 1) (i32.const 1048576) (i32.const 1000000) (i32.const 8)))))
