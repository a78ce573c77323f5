#include "lowbit/cpu.h"

#include <cpuid.h>
#include <cstdlib>
#include <stdexcept>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace lowbit {

namespace {

struct CpuFeatures {
  bool avx2 = false, fma = false, avx512 = false, vnni = false, vbmi = false, amx = false;
};

uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}

CpuFeatures probe() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27);
  f.fma = c & (1u << 12);
  if (!osxsave) return f;
  const uint64_t xcr0 = xgetbv0();
  const bool ymm_os = (xcr0 & 0x6) == 0x6;
  const bool zmm_os = (xcr0 & 0xE6) == 0xE6;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
  f.avx2 = ymm_os && f.fma && (b & (1u << 5));
  const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17), avx512bw = b & (1u << 30),
             avx512vl = b & (1u << 31);
  f.avx512 = zmm_os && f.avx2 && avx512f && avx512dq && avx512bw && avx512vl;
  f.vbmi = c & (1u << 1);
  f.vnni = f.avx512 && (c & (1u << 11)) && f.vbmi;
  f.amx = f.vnni && (d & (1u << 24)) && (d & (1u << 25));  // AMX-TILE and AMX-INT8
#endif
  return f;
}

Isa best_of(const CpuFeatures& f) {
  if (f.amx) return Isa::amx;
  if (f.vnni) return Isa::avx512vnni;
  if (f.avx512) return Isa::avx512;
  if (f.avx2) return Isa::avx2;
  return Isa::scalar;
}

Isa cap_from_env(Isa detected) {
  const char* env = std::getenv("LOWBIT_ISA");
  if (!env || !*env) return detected;
  const Isa want = isa_from_name(env);
  return static_cast<int>(want) < static_cast<int>(detected) ? want : detected;
}

int g_active = -1;  // set on first use, so a bad LOWBIT_ISA raises in Python, not at load

}  // namespace

Isa detected_isa() {
  static const Isa isa = best_of(probe());
  return isa;
}

Isa active_isa() {
  if (g_active < 0) g_active = static_cast<int>(cap_from_env(detected_isa()));
  return static_cast<Isa>(g_active);
}

void set_isa(Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(detected_isa()))
    throw std::invalid_argument(std::string("this CPU cannot run ISA '") + isa_name(isa) +
                                "'; best available is '" + isa_name(detected_isa()) + "'");
  g_active = static_cast<int>(isa);
}

void reset_isa() { g_active = -1; }

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::avx512vnni: return "avx512vnni";
    case Isa::amx: return "amx";
  }
  return "?";
}

Isa isa_from_name(const std::string& name) {
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512, Isa::avx512vnni, Isa::amx})
    if (name == isa_name(isa)) return isa;
  throw std::invalid_argument("unknown ISA '" + name +
                              "'; expected one of scalar, avx2, avx512, avx512vnni, amx");
}

bool amx_enable() {
#if defined(__linux__) && defined(__x86_64__)
  static const bool ok = [] {
    constexpr long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
  }();
  return ok && detected_isa() == Isa::amx;
#else
  return false;
#endif
}

}  // namespace lowbit
