;; Spins forever: stopped by fuel (503) or, with a huge fuel budget, by the deadline (504).
(module
  (memory (export "memory") 1)
  (func (export "_start") (loop $spin (br $spin))))
