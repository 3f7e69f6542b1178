;; Class: waits no deadline interrupts. A shared memory and an atomic wait with no timeout:
;; the module check refuses shared memories.
(module
  (memory (export "memory") 1 1 shared)
  (func (export "_start")
    (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1)))))
