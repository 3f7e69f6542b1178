;; Class: host memory sized by the guest. One fd_write whose iovec claims 4 GiB - 1 bytes, to
;; stdout and to stderr: the host must refuse it (EFAULT) before allocating or copying. The
;; guest then answers with what each call returned ("21 21" is EFAULT twice).
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "Status: 200 OK\nContent-Type: text/plain\n\n")
  (func $put (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $errno (param $e i32)
    ;; two decimal digits and a space at 200
    (i32.store8 (i32.const 200) (i32.add (i32.const 48) (i32.div_u (local.get $e) (i32.const 10))))
    (i32.store8 (i32.const 201) (i32.add (i32.const 48) (i32.rem_u (local.get $e) (i32.const 10))))
    (i32.store8 (i32.const 202) (i32.const 32))
    (call $put (i32.const 200) (i32.const 3)))
  (func (export "_start")
    (local $out i32) (local $err i32)
    (i32.store (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const -1))
    (local.set $out (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
    (local.set $err (call $fd_write (i32.const 2) (i32.const 16) (i32.const 1) (i32.const 24)))
    (call $put (i32.const 64) (i32.const 41))
    (call $errno (local.get $out))
    (call $errno (local.get $err))))
