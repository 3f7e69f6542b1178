;; Class: work the deadline did not bound. A start function that spins: stopped by the
;; request's fuel or deadline like any other guest code.
(module
  (memory (export "memory") 1)
  (func $spin (loop $again (br $again)))
  (start $spin)
  (func (export "_start")))
