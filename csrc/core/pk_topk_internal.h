// Internal side of the product-key kernels: their entry points. The limits
// callers must respect are in memkernels.h (MK_PK_*).
#pragma once

#include "memkernels.h"

namespace mk {

mk_status pk_check_select_args(const mk_pk_select_args* a);
mk_status pk_select_cpu(const mk_pk_select_args& a);
mk_status pk_select_cuda(const mk_pk_select_args& a, void* stream);
mk_status pk_topk_fused_cuda(const mk_pk_topk_args& a, void* stream);

}  // namespace mk
