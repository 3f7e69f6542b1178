;; Class: features outpost does not host. A 64-bit memory: refused by the module check.
(module
  (memory (export "memory") i64 1)
  (func (export "_start")))
