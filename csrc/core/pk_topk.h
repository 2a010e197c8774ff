// Internal (C++) side of the product-key selection: CPU and CUDA entry points.
#pragma once

#include "memkernels.h"

namespace mk {

constexpr int64_t kPkMaxKeys = 65535;  // slot ids i1 * n + i2 fit 32 bits
constexpr int64_t kPkMaxKCuda = 1024;  // shared-memory selection buffers

mk_status pk_check_select_args(const mk_pk_select_args* a);
mk_status pk_select_cpu(const mk_pk_select_args& a);
mk_status pk_select_cuda(const mk_pk_select_args& a, void* stream);

constexpr int64_t kPkFusedMaxK = 128;
mk_status pk_topk_fused_cuda(const mk_pk_topk_args& a, void* stream);

}  // namespace mk
