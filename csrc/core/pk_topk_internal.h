// Internal side of the product-key kernels: their entry points. The limits
// callers must respect are in memkernels.h (MK_PK_*).
#pragma once

#include "memkernels.h"

namespace mk {

mk_status pk_check_select_args(const mk_pk_select_args* a);
mk_status pk_select_cpu(const mk_pk_select_args& a);
mk_status pk_select_cuda(const mk_pk_select_args& a, void* stream);
mk_status pk_topk_fused_cuda(const mk_pk_topk_args& a, void* stream);

// pk_topk's backward: the key-table rows and weights of the embedding bag it
// runs on (rows [T*H*2, k] int64: i1 + h*2*n, then i2 + h*2*n + n; weights
// the selected pairs' score gradients, repeated for both halves).
mk_status pk_backward_pairs_cpu(const mk_pk_topk_bwd_args& a, int64_t* rows, void* weights);
mk_status pk_backward_pairs_cuda(const mk_pk_topk_bwd_args& a, int64_t* rows, void* weights, void* stream);

}  // namespace mk
