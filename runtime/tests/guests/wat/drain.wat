;; Reads its whole request body before answering, then answers "read N" (N bytes, in decimal).
;; A body past the tenant's cap stops it while it reads, so nothing of a response is sent yet.
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "Content-Type: text/plain\n\nread ")   ;; 64, 31
  (func (export "_start")
    (local $total i32) (local $n i32) (local $at i32) (local $len i32)
    ;; Read into 4096..8192 until fd_read reports 0 bytes (or fails).
    (block $eof
      (loop $more
        (i32.store (i32.const 0) (i32.const 4096))
        (i32.store (i32.const 4) (i32.const 4096))
        (br_if $eof (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (local.set $n (i32.load (i32.const 8)))
        (br_if $eof (i32.eqz (local.get $n)))
        (local.set $total (i32.add (local.get $total) (local.get $n)))
        (br $more)))
    ;; The decimal digits of $total, backwards from 127 (at most 10 digits).
    (local.set $at (i32.const 128))
    (loop $digit
      (local.set $at (i32.sub (local.get $at) (i32.const 1)))
      (i32.store8 (local.get $at) (i32.add (i32.const 48) (i32.rem_u (local.get $total) (i32.const 10))))
      (local.set $total (i32.div_u (local.get $total) (i32.const 10)))
      (br_if $digit (local.get $total)))
    (local.set $len (i32.sub (i32.const 128) (local.get $at)))
    ;; Head and "read " (64..95), then the digits.
    (i32.store (i32.const 16) (i32.const 64))
    (i32.store (i32.const 20) (i32.const 31))
    (i32.store (i32.const 24) (local.get $at))
    (i32.store (i32.const 28) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 2) (i32.const 8)))))
