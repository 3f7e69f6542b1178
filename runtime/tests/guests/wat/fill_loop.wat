;; Fills 64 MiB of its memory over and over: nearly all of its time is in wasmer's memory.fill
;; (host code, where the deadline's signal may not act), each fill charged 4 Mi fuel up front.
(module
  (memory (export "memory") 1025)
  (func (export "_start")
    (loop $again
      (memory.fill (i32.const 0) (i32.const 7) (i32.const 67108864))
      (br $again))))
