;; Grows its memory to 2 MiB, writes every 4 KiB page of it, then spins until stopped (fuel or
;; the deadline): each request leaves 2 MiB of dirty guest memory for the host to scrub.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (local $at i32)
    (drop (memory.grow (i32.const 31)))
    (loop $page
      (i32.store8 (local.get $at) (i32.const 171))
      (local.set $at (i32.add (local.get $at) (i32.const 4096)))
      (br_if $page (i32.lt_u (local.get $at) (i32.const 2097152))))
    (loop $spin (br $spin))))
