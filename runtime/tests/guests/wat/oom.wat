;; Grows memory until the cap refuses, then aborts the way an allocator does: 500, limit=memory.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $grow
      (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable))
