;; On the wasix host: opens a TCP socket with WASIX's own calls and connects it to
;; 127.0.0.1:PORT, PORT being the request body in decimal. Answers the errno of each call, so
;; the test sees what the host did (a listener the test opened must see no connection).
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasix_32v1" "sock_open" (func $sock_open (param i32 i32 i32 i32) (result i32)))
  (import "wasix_32v1" "sock_connect" (func $sock_connect (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0..16 iovec; 32: the socket fd; 48..: the address; 64..80: the body read; 96..: text;
  ;; 4096..: the response.
  (data (i32.const 96) "Content-Type: text/plain\n\n")   ;; 96, 26
  (data (i32.const 128) "sock_open: ")                   ;; 128, 11
  (data (i32.const 144) "sock_connect: ")                ;; 144, 14
  (global $pos (mut i32) (i32.const 4096))
  (func $put (param $ptr i32) (param $len i32)
    (memory.copy (global.get $pos) (local.get $ptr) (local.get $len))
    (global.set $pos (i32.add (global.get $pos) (local.get $len))))
  (func $digit (param $d i32)
    (i32.store8 (global.get $pos) (i32.add (i32.const 48) (local.get $d)))
    (global.set $pos (i32.add (global.get $pos) (i32.const 1))))
  (func $num (param $n i32)
    (if (i32.ge_u (local.get $n) (i32.const 10))
      (then (call $digit (i32.rem_u (i32.div_u (local.get $n) (i32.const 10)) (i32.const 10)))))
    (call $digit (i32.rem_u (local.get $n) (i32.const 10)))
    (i32.store8 (global.get $pos) (i32.const 10))
    (global.set $pos (i32.add (global.get $pos) (i32.const 1))))
  (func (export "_start")
    (local $port i32) (local $i i32) (local $c i32) (local $n i32) (local $rc i32)
    ;; The port: up to 15 decimal digits of the body.
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 15))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (local.set $n (i32.load (i32.const 8)))
    (block $end
      (loop $more
        (br_if $end (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $c (i32.sub (i32.load8_u (i32.add (i32.const 64) (local.get $i))) (i32.const 48)))
        (br_if $end (i32.gt_u (local.get $c) (i32.const 9)))
        (local.set $port (i32.add (i32.mul (local.get $port) (i32.const 10)) (local.get $c)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $more)))
    (call $put (i32.const 96) (i32.const 26))
    ;; sock_open(inet4 = 1, stream = 1, tcp = 6, fd out at 32)
    (local.set $rc (call $sock_open (i32.const 1) (i32.const 1) (i32.const 6) (i32.const 32)))
    (call $put (i32.const 128) (i32.const 11))
    (call $num (local.get $rc))
    ;; The address: family inet4, a zero byte, the port (in the host's byte order, as wasix
    ;; reads it), then 127.0.0.1.
    (i32.store8 (i32.const 48) (i32.const 1))
    (i32.store8 (i32.const 49) (i32.const 0))
    (i32.store16 (i32.const 50) (local.get $port))
    (i32.store8 (i32.const 52) (i32.const 127))
    (i32.store8 (i32.const 53) (i32.const 0))
    (i32.store8 (i32.const 54) (i32.const 0))
    (i32.store8 (i32.const 55) (i32.const 1))
    (call $put (i32.const 144) (i32.const 14))
    (call $num (call $sock_connect (i32.load (i32.const 32)) (i32.const 48)))
    (i32.store (i32.const 0) (i32.const 4096))
    (i32.store (i32.const 4) (i32.sub (global.get $pos) (i32.const 4096)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
