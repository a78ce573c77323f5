// Instruction-set detection and the run-time choice among kernel variants. The variant is
// the best the CPU (and the OS, for AVX-512 and AMX state) supports, capped by the
// environment variable LOWBIT_ISA=scalar|avx2|avx512|avx512vnni|amx or by set_isa().
#pragma once
#include <string>

namespace lowbit {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2, avx512vnni = 3, amx = 4 };

Isa detected_isa();           // best level this machine can run
Isa active_isa();             // what kernels dispatch to now (detected, capped by override)
void set_isa(Isa isa);        // cap for tests/benchmarks; throws if the machine lacks it
void reset_isa();             // back to LOWBIT_ISA / detected
const char* isa_name(Isa isa);
Isa isa_from_name(const std::string& name);  // throws std::invalid_argument on unknown

// True once AMX tile state has been granted to this process (Linux arch_prctl).
bool amx_enable();

}  // namespace lowbit
