;; A reactor (library) module: no _start, refused at load.
(module
  (memory (export "memory") 1)
  (func (export "_initialize")))
