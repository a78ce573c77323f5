// Argument checks for the C++ core. A failed LOWBIT_CHECK throws std::invalid_argument, which
// pybind11 turns into ValueError; bindings check shapes first and name the argument, so these
// are the last line of defence for callers that are not Python.
#pragma once
#include <sstream>
#include <stdexcept>

#define LOWBIT_CHECK(cond, msg)                                               \
  do {                                                                        \
    if (!(cond)) {                                                            \
      std::ostringstream lowbit_check_os_;                                    \
      lowbit_check_os_ << msg;                                                \
      throw std::invalid_argument(lowbit_check_os_.str());                   \
    }                                                                         \
  } while (0)
