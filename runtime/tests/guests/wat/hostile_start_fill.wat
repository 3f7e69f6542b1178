;; Class: work the deadline did not bound. A start function (it ran inside instantiation,
;; before the deadline was armed) that fills 16 MiB of memory in an endless loop: memory.fill
;; must cost fuel by length and the start function must run under the request's fuel and
;; deadline (503 fuel or 504 time, within the deadline).
(module
  (memory (export "memory") 256)
  (func $fill_forever
    (loop $again
      (memory.fill (i32.const 0) (i32.const 7) (i32.const 16777216))
      (br $again)))
  (start $fill_forever)
  (func (export "_start")))
