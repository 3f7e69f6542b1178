;; Calls the host's filesystem, socket and process imports itself (a libc would refuse some of
;; them before reaching the host) and answers one line per call with the errno the host gave:
;; the test compares the whole body with the documented errnos.
;; `preopens` is the first descriptor from 3 to 1023 fd_prestat_get accepts, or "none".
;; `path_open` and `path_filestat_get` look for "etc/hostname" relative to fd 3.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $fd_prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_filestat_get" (func $path_filestat_get (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_accept" (func $sock_accept (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_recv" (func $sock_recv (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_send" (func $sock_send (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_shutdown" (func $sock_shutdown (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_raise" (func $proc_raise (param i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0..16: iovec and scratch; 64..: fixed text; 1024..: the path; 4096..: the response.
  (data (i32.const 64) "Content-Type: text/plain\n\n")                 ;; 64, 26
  (data (i32.const 96) "preopens: ")                                   ;; 96, 10
  (data (i32.const 112) "none")                                        ;; 112, 4
  (data (i32.const 120) "path_open: ")                                 ;; 120, 11
  (data (i32.const 136) "path_filestat_get: ")                         ;; 136, 19
  (data (i32.const 160) "fd_read: ")                                   ;; 160, 9
  (data (i32.const 176) "fd_write: ")                                  ;; 176, 10
  (data (i32.const 192) "sock_accept: ")                               ;; 192, 13
  (data (i32.const 208) "sock_recv: ")                                 ;; 208, 11
  (data (i32.const 224) "sock_send: ")                                 ;; 224, 11
  (data (i32.const 240) "sock_shutdown: ")                             ;; 240, 15
  (data (i32.const 256) "proc_raise: ")                                ;; 256, 12
  (data (i32.const 272) "etc/hostname")                                ;; 272, 12
  (global $pos (mut i32) (i32.const 4096))
  (func $put (param $ptr i32) (param $len i32)
    (memory.copy (global.get $pos) (local.get $ptr) (local.get $len))
    (global.set $pos (i32.add (global.get $pos) (local.get $len))))
  (func $digit (param $d i32)
    (i32.store8 (global.get $pos) (i32.add (i32.const 48) (local.get $d)))
    (global.set $pos (i32.add (global.get $pos) (i32.const 1))))
  ;; A number below 10,000 in decimal, then a newline.
  (func $num (param $n i32)
    (if (i32.ge_u (local.get $n) (i32.const 1000))
      (then (call $digit (i32.rem_u (i32.div_u (local.get $n) (i32.const 1000)) (i32.const 10)))))
    (if (i32.ge_u (local.get $n) (i32.const 100))
      (then (call $digit (i32.rem_u (i32.div_u (local.get $n) (i32.const 100)) (i32.const 10)))))
    (if (i32.ge_u (local.get $n) (i32.const 10))
      (then (call $digit (i32.rem_u (i32.div_u (local.get $n) (i32.const 10)) (i32.const 10)))))
    (call $digit (i32.rem_u (local.get $n) (i32.const 10)))
    (i32.store8 (global.get $pos) (i32.const 10))
    (global.set $pos (i32.add (global.get $pos) (i32.const 1))))
  (func $line (param $name i32) (param $len i32) (param $errno i32)
    (call $put (local.get $name) (local.get $len))
    (call $num (local.get $errno)))
  (func (export "_start")
    (local $fd i32) (local $found i32) (local $rc i32)
    (call $put (i32.const 64) (i32.const 26))
    ;; Every descriptor beyond stdio: is any of them a preopened directory?
    (local.set $fd (i32.const 3))
    (block $done
      (loop $next
        (local.set $rc (call $fd_prestat_get (local.get $fd) (i32.const 32)))
        (if (i32.ne (local.get $rc) (i32.const 8))
          (then (local.set $found (local.get $fd)) (br $done)))
        (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
        (br_if $next (i32.lt_u (local.get $fd) (i32.const 1024)))))
    (call $put (i32.const 96) (i32.const 10))
    (if (local.get $found)
      (then (call $num (local.get $found)))
      (else (call $put (i32.const 112) (i32.const 4))
            (i32.store8 (global.get $pos) (i32.const 10))
            (global.set $pos (i32.add (global.get $pos) (i32.const 1)))))
    ;; path_open(dirfd 3, follow symlinks, "etc/hostname", no oflags, read rights, fd out at 40)
    (call $line (i32.const 120) (i32.const 11)
      (call $path_open (i32.const 3) (i32.const 1) (i32.const 272) (i32.const 12) (i32.const 0)
        (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 40)))
    (call $line (i32.const 136) (i32.const 19)
      (call $path_filestat_get (i32.const 3) (i32.const 1) (i32.const 272) (i32.const 12) (i32.const 512)))
    ;; One iovec at 0: 8 bytes at 48.
    (i32.store (i32.const 0) (i32.const 48))
    (i32.store (i32.const 4) (i32.const 8))
    (call $line (i32.const 160) (i32.const 9)
      (call $fd_read (i32.const 3) (i32.const 0) (i32.const 1) (i32.const 40)))
    (call $line (i32.const 176) (i32.const 10)
      (call $fd_write (i32.const 3) (i32.const 0) (i32.const 1) (i32.const 40)))
    (call $line (i32.const 192) (i32.const 13)
      (call $sock_accept (i32.const 3) (i32.const 0) (i32.const 40)))
    (call $line (i32.const 208) (i32.const 11)
      (call $sock_recv (i32.const 3) (i32.const 0) (i32.const 1) (i32.const 0) (i32.const 40) (i32.const 44)))
    (call $line (i32.const 224) (i32.const 11)
      (call $sock_send (i32.const 3) (i32.const 0) (i32.const 1) (i32.const 0) (i32.const 40)))
    (call $line (i32.const 240) (i32.const 15)
      (call $sock_shutdown (i32.const 3) (i32.const 2)))
    (call $flush)
    ;; Last, in a write of its own: a host that does raise the signal ends the guest here.
    (call $line (i32.const 256) (i32.const 12)
      (call $proc_raise (i32.const 9)))
    (call $flush))
  ;; Write what was put since the last flush.
  (global $sent (mut i32) (i32.const 4096))
  (func $flush
    (i32.store (i32.const 0) (global.get $sent))
    (i32.store (i32.const 4) (i32.sub (global.get $pos) (global.get $sent)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (global.set $sent (global.get $pos))))
