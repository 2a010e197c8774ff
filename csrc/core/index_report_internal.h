// Internal side of the bad-index reporter (index_report_cuda.cu): what a
// checked CUDA call does with one. Torch-free.
#pragma once

#include <cstdint>

#include "memkernels.h"

namespace mk {

// The device slot this call's kernels record their first bad flat position in
// (atomicMin; free slots hold ~0).
unsigned long long* reporter_slot(mk_index_reporter* r);

// MK_ERR_INVALID_ARGUMENT unless the current CUDA device is the reporter's.
mk_status reporter_check_device(const mk_index_reporter* r);

// Enqueues the one-thread kernel that, after the call's kernels, publishes
// the slot's position (and the index there) to the host report if it holds
// one, and frees the slot.
mk_status publish_bad_index(mk_index_reporter* r, unsigned long long* slot, const void* indices,
                            mk_index_dtype index_dtype, int64_t num_pairs, int64_t num_rows,
                            int64_t bag_size, void* stream);

}  // namespace mk
