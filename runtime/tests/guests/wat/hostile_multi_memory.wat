;; Class: memories past the cap. Two memories of the tenant's cap each would double it: the
;; module check refuses more than one memory.
(module
  (memory (export "memory") 1)
  (memory $second 1)
  (func (export "_start")))
