;; Imports a function outpost does not provide: refused at load, naming the import.
(module
  (import "env" "open_socket" (func $open (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start") (drop (call $open (i32.const 0)))))
