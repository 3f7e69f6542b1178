;; Class: tables sized by the guest. A table declared with 100 million entries would take
;; 800 MB to 1.6 GB on the host: instantiation must fail with the memory limit (500).
(module
  (memory (export "memory") 1)
  (table 100000000 funcref)
  (func (export "_start")))
