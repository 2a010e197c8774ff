// Internal (C++) entry points of the row-sparse optimizer updates.
#pragma once

#include "memkernels.h"

namespace mk {

mk_status row_update_check_args(const mk_sparse_row_update_args* a);
mk_status row_update_cpu(const mk_sparse_row_update_args& a);
mk_status row_update_cuda(const mk_sparse_row_update_args& a, void* stream);

}  // namespace mk
