/*
 * memkernels C ABI: the torch-free face of the core kernels.
 *
 * Every function takes raw pointers, sizes and strides (in elements), a device
 * and, for CUDA, a cudaStream_t passed as void*. Nothing here allocates device
 * memory: callers pass a workspace sized by the matching *_workspace_size call.
 * All functions return an mk_status; mk_status_string() names it.
 *
 * Weighted embedding bag (fixed-size bags):
 *   out[t, :] = sum_j weights[t, j] * values[indices[t, j], :]
 * values [N, D] in f32/f16/bf16/f64 with unit column stride and any row stride;
 * indices [T, B] int32 or int64, contiguous; weights [T, B] contiguous in the
 * accumulation type (f64 for f64 values, f32 otherwise); out [T, D] in the
 * values' dtype. Accumulation is in the accumulation type.
 *
 * The backward is atomic-free and deterministic (docs/embedding_bag.md):
 *   1. mk_embedding_bag_backward_plan    sort pairs by row, find segments
 *   2. mk_embedding_bag_backward_count   (optional) read the number of distinct rows
 *      (or give sparse_capacity and sparse_count: no host round trip)
 *   3. mk_embedding_bag_backward_reduce  one pass: row gradients and weight gradients
 * The workspace must stay untouched between the three calls.
 */
#ifndef MEMKERNELS_H_
#define MEMKERNELS_H_

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define MK_API __declspec(dllexport)
#else
#define MK_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mk_status {
  MK_OK = 0,
  MK_ERR_INVALID_ARGUMENT = 1,  /* a size, pointer or stride is invalid */
  MK_ERR_INDEX_OUT_OF_RANGE = 2, /* an index is outside [0, num_rows) */
  MK_ERR_UNSUPPORTED = 3,        /* dtype or device this build does not support */
  MK_ERR_CUDA = 4,               /* a CUDA runtime call or launch failed */
  MK_ERR_WORKSPACE_TOO_SMALL = 5,
  MK_ERR_OUT_OF_MEMORY = 6, /* a host allocation for scratch failed */
  MK_ERR_INTERNAL = 7       /* anything else a call could not complete; never an exception */
} mk_status;

typedef enum mk_dtype { MK_F32 = 0, MK_F16 = 1, MK_BF16 = 2, MK_F64 = 3 } mk_dtype;
struct mk_row_update; /* defined below, with mk_sparse_row_update */
struct mk_index_reporter; /* defined below (opaque) */
typedef enum mk_index_dtype { MK_I32 = 0, MK_I64 = 1 } mk_index_dtype;
typedef enum mk_device { MK_CPU = 0, MK_CUDA = 1 } mk_device;

typedef struct mk_embedding_bag_fwd_args {
  int64_t num_rows;   /* N */
  int64_t dim;        /* D */
  int64_t num_bags;   /* T */
  int64_t bag_size;   /* B */
  mk_dtype value_dtype;
  mk_index_dtype index_dtype;
  const void* values;        /* [N, D], row stride values_row_stride */
  int64_t values_row_stride; /* elements, >= D */
  const void* indices;       /* [T, B] contiguous */
  const void* weights;       /* [T, B] contiguous, accumulation type */
  void* out;                 /* [T, D] contiguous, values' dtype */
  /* Index checking. CPU: when check_indices != 0, a bad index makes the call
   * return MK_ERR_INDEX_OUT_OF_RANGE and *bad_position (if not NULL) receives
   * the first flat position t*B+j holding one. CUDA: when error_flag (a device
   * int32) is not NULL, a kernel that meets a bad index stores 1 there; the
   * caller reads it. When reporter is set (ABI 4), the first bad index is
   * published to it instead (see mk_index_reporter): no host round trip. On
   * both devices a bad index is never dereferenced: its term is skipped. */
  int check_indices;
  int64_t* bad_position;
  int32_t* error_flag;
  int num_threads; /* CPU threads; 0 uses the OpenMP default */
  /* Added in ABI 4. CUDA, with check_indices != 0: the call records its first
   * bad position on the device and, after the bag, a one-thread kernel
   * publishes position and value to this reporter's host-mapped report. The
   * call never synchronises; the host reads the report whenever it likes
   * with mk_index_reporter_poll. Ignored on the CPU. */
  struct mk_index_reporter* reporter;
} mk_embedding_bag_fwd_args;

typedef struct mk_embedding_bag_bwd_args {
  int64_t num_rows, dim, num_bags, bag_size;
  mk_dtype value_dtype;
  mk_index_dtype index_dtype;
  const void* values; /* [N, D], read for the weights' gradient */
  int64_t values_row_stride;
  const void* indices;  /* [T, B] contiguous */
  const void* weights;  /* [T, B] contiguous, accumulation type */
  const void* grad_out; /* [T, D] contiguous, values' dtype */
  /* Outputs. grad_weights may be NULL (not computed). Exactly one of
   * grad_values (dense [N, D] contiguous, values' dtype, fully written:
   * untouched rows are zero) and sparse_rows/sparse_grads (distinct rows in
   * ascending order as int64 [U], their gradients [U, D] contiguous in the
   * values' dtype) may be set, or neither. */
  void* grad_weights; /* [T, B] accumulation type */
  void* grad_values;
  int64_t* sparse_rows;
  void* sparse_grads;
  int sparse_grads_acc; /* sparse_grads in the accumulation type instead of the values' dtype */
  /* When set, the row gradients are applied to `values` (updated in place) by
   * this optimizer update instead of being written anywhere; grad_values and
   * the sparse outputs must then be NULL. Each row is updated as the segment
   * reduction finishes it, on both devices; nothing is read back to the host.
   * (CUDA, ABI 2 to 4 before 2026-12-01: the row gradients went to an fp32
   * capacity form of min(N, T*B) rows inside the workspace first; the size
   * query no longer counts it.) */
  const struct mk_row_update* update;
  int num_threads; /* CPU threads; 0 uses the OpenMP default */
  /* Added in ABI 2: the capacity form of the sparse outputs (static shapes, no
   * host round trip). 0: sparse_rows/sparse_grads hold exactly the U distinct
   * rows (U from mk_embedding_bag_backward_count). > 0: they hold
   * sparse_capacity rows; rows past U are -1 and their gradients zero.
   * min(num_rows, num_bags * bag_size) always suffices when every index is
   * valid; segments past the capacity (only invalid indices can add them)
   * are dropped. */
  int64_t sparse_capacity;
  /* Added in ABI 2: if not NULL, receives U as an int64 (device memory on CUDA). */
  int64_t* sparse_count;
} mk_embedding_bag_bwd_args;

/* Row-sparse optimizer updates: only the given (distinct) rows of a table
 * change, in place. Deterministic: each row is updated by one thread or warp,
 * and stochastic rounding draws its bits from (seed, step, row, column_offset +
 * column) only.
 *
 *   SGD:      w -= lr * g
 *   ADAM:     the semantics of torch.optim.SparseAdam on the touched rows
 *             (global step count for bias correction):
 *               m += (1 - beta1) * (g - m);  v += (1 - beta2) * (g*g - v)
 *               w -= lr * sqrt(1 - beta2^step) / (1 - beta1^step) * m / (sqrt(v) + eps)
 *   ADAGRAD_ROWWISE: one accumulator per row:
 *               G += mean(g*g);  w -= lr * g / (sqrt(G) + eps)
 *   ADAM_ROWWISE: Adam with one second moment per row (a float per
 *             row instead of one per element):
 *               m += (1 - beta1) * (g - m);  v_row += (1 - beta2) * (mean(g*g) - v_row)
 *               w -= lr * sqrt(1 - beta2^step) / (1 - beta1^step) * m / (sqrt(v_row) + eps)
 * weight_decay is decoupled and applied to touched rows only, before the
 * update: w -= lr * weight_decay * w (AdamW for ADAM). max_row_norm > 0 scales
 * each row's gradient to an L2 norm of at most max_row_norm first.
 * Optimizer state is fp32 (or bf16, see state_bf16); the table may be f32, f16,
 * bf16 or f64 (f64 state for f64 tables). */
typedef enum mk_row_optimizer {
  MK_OPT_SGD = 0,
  MK_OPT_ADAM = 1,
  MK_OPT_ADAGRAD_ROWWISE = 2,
  MK_OPT_ADAM_ROWWISE = 3 /* added in ABI 3 */
} mk_row_optimizer;

typedef struct mk_row_update {
  mk_row_optimizer kind;
  double lr, beta1, beta2, eps, weight_decay, max_row_norm;
  int64_t step;            /* ADAM, ADAM_ROWWISE: the step count including this update, >= 1 */
  int stochastic_rounding; /* f16/bf16 tables: round each new value stochastically */
  uint64_t seed;
  void* state1; /* ADAM, ADAM_ROWWISE: exp_avg [N, D]; ADAGRAD_ROWWISE: [N]; SGD: unused */
  void* state2; /* ADAM: exp_avg_sq [N, D]; ADAM_ROWWISE: exp_avg_sq [N] */
  /* Added in ABI 2: the table's first column within a wider table it is a
   * column shard of (0 otherwise). Stochastic rounding hashes column
   * column_offset + d, so a column-sharded table rounds as the whole one. */
  int64_t column_offset;
  /* Added in ABI 2: when not NULL, read at run time (device memory on CUDA,
   * host memory on the CPU) so that one compiled or captured call serves
   * every step: *step_ptr replaces step, and lr is multiplied by *lr_scale (a
   * learning-rate schedule; weight decay scales with it, as lr * weight_decay). */
  const int64_t* step_ptr;
  const float* lr_scale;
  /* Added in ABI 3: when not 0 (f32, f16 and bf16 tables only), the [N, D]
   * states (exp_avg, and exp_avg_sq of ADAM) are stored as bf16, each new
   * value rounded stochastically with bits hashed from (seed, step, row,
   * column_offset + column) and the state's own salt; [N] states stay f32. */
  int state_bf16;
} mk_row_update;

typedef struct mk_sparse_row_update_args {
  int64_t num_rows, dim;
  mk_dtype value_dtype;
  void* table; /* [N, D], row stride table_row_stride, updated in place */
  int64_t table_row_stride;
  int64_t num_updates;  /* U */
  const int64_t* rows;  /* [U] distinct, in [0, N) */
  const void* grads;    /* [U, D] contiguous, in the table's accumulation type */
  mk_row_update update;
  int num_threads;
} mk_sparse_row_update_args;

/* Product-key selection (the part of pk_topk after the half-scores).
 * For each token t and head h, with half-scores s1[t,h,:] and s2[t,h,:] over
 * num_keys sub-keys: the top-k of each half, the k x k candidate sums, and
 * their top-k. Order everywhere: score descending, then index ascending (slot
 * ids i1 * num_keys + i2 for the candidates), so ties break the same way on
 * every device. Element (t, h, i) of a score matrix is at
 * t * scores_stride_t + h * scores_stride_h + i. */
typedef struct mk_pk_select_args {
  int64_t num_tokens; /* T */
  int64_t num_heads;  /* H */
  int64_t num_keys;   /* n_keys, at most MK_PK_MAX_KEYS */
  int64_t k;          /* 1 <= k <= num_keys; at most MK_PK_MAX_K_CUDA on CUDA */
  const float* scores1;
  const float* scores2;
  int64_t scores_stride_t, scores_stride_h;
  float* out_scores;    /* [T, H, k] contiguous, descending */
  int64_t* out_indices; /* [T, H, k] contiguous slot ids */
  int num_threads;      /* CPU threads; 0 uses the OpenMP default */
} mk_pk_select_args;

/* Limits of the product-key ops; past them a call returns
 * MK_ERR_INVALID_ARGUMENT (num_keys) or MK_ERR_UNSUPPORTED (k). */
#define MK_PK_MAX_KEYS 65535  /* slot ids i1 * num_keys + i2 fit 32 bits */
#define MK_PK_MAX_K_CUDA 1024 /* mk_pk_select on CUDA: shared-memory selection buffers */
#define MK_PK_FUSED_MAX_K 128 /* mk_pk_topk_fused */

/* Fused product-key top-k (CUDA, f16/bf16 inputs, k <= MK_PK_FUSED_MAX_K): half-scores on
 * tensor cores streamed through shared memory, a running per-token top-k per
 * half, and the candidate top-k in the same kernel; no [T, H, n_keys] score
 * matrix is written. Same results and tie rule as mk_pk_select on the same
 * half-scores (fp32 accumulation). */
typedef struct mk_pk_topk_args {
  int64_t num_tokens, num_heads, num_keys, half_dim, k;
  mk_dtype dtype;    /* MK_F16 or MK_BF16 */
  const void* query; /* [T, H, 2 * half_dim] contiguous */
  const void* keys;  /* [H, 2, num_keys, half_dim] contiguous */
  float* out_scores;    /* [T, H, k] */
  int64_t* out_indices; /* [T, H, k] */
} mk_pk_topk_args;

/* Backward of pk_topk through the selected pairs (added in ABI 2). With
 * i1 = slot / num_keys and i2 = slot % num_keys of each selected slot:
 *   grad_query[t, h, :half] = sum_i grad_scores[t, h, i] * keys[h, 0, i1]
 *   grad_query[t, h, half:] = sum_i grad_scores[t, h, i] * keys[h, 1, i2]
 *   grad_keys[h, 0, i1]    += grad_scores[t, h, i] * query[t, h, :half]   (and the second half alike)
 * It is the embedding bag over the key table [H * 2 * num_keys, half]: the
 * query's gradient its forward, the keys' its atomic-free, deterministic
 * backward. The workspace holds the bag's indices and weights and the
 * backward's plan (mk_pk_topk_backward_workspace_size). */
typedef struct mk_pk_topk_bwd_args {
  int64_t num_tokens, num_heads, num_keys, half_dim, k;
  mk_dtype dtype;           /* query, keys and the gradients: f32, f16, bf16 or f64 */
  const void* grad_scores;  /* [T, H, k] contiguous, accumulation type (f64 for f64, else f32) */
  const void* query;        /* [T, H, 2 * half_dim] contiguous */
  const void* keys;         /* [H, 2, num_keys, half_dim] contiguous */
  const int64_t* indices;   /* [T, H, k] slot ids in [0, num_keys^2) */
  void* grad_query;         /* [T, H, 2 * half_dim] or NULL (not computed) */
  void* grad_keys;          /* [H, 2, num_keys, half_dim] or NULL (not computed) */
  int num_threads;          /* CPU threads; 0 uses the OpenMP default */
} mk_pk_topk_bwd_args;

/* A bad index a CUDA call met, as a reporter publishes it (ABI 4). */
typedef struct mk_index_report {
  int64_t position; /* flat position t*bag_size + j of the call's first bad index */
  int64_t value;    /* the index found there */
  int64_t num_rows; /* that call's N */
  int64_t bag_size; /* that call's B: position / bag_size is the bag */
} mk_index_report;

/* Where CUDA calls report bad indices without synchronising the host (ABI 4):
 * a small report in mapped, page-locked host memory that the device writes
 * (only when a call met a bad index) and the host reads with a plain load,
 * plus a ring of device slots in which each call's kernels find its first bad
 * position. The report holds the earliest unread one: later reports are
 * dropped until it is polled. One reporter serves every stream of its device;
 * a call takes the next slot of a ring of 256, so up to 256 calls may be in
 * flight on other streams at once. Safe to use from several host threads. */
typedef struct mk_index_reporter mk_index_reporter;

/* Allocates a reporter for CUDA device `device` (synchronous, once per device:
 * call it before capturing a CUDA graph that uses it). MK_ERR_UNSUPPORTED in
 * a build without CUDA. */
MK_API mk_status mk_index_reporter_create(int device, mk_index_reporter** out);
/* Never blocks: when a report is waiting, copies it to *report (if not NULL),
 * clears it and sets *found to 1; otherwise sets *found to 0. A report
 * appears once the device has run the call that met the bad index: to be
 * sure every earlier call is covered, synchronise the device first. */
MK_API mk_status mk_index_reporter_poll(mk_index_reporter* reporter, mk_index_report* report,
                                        int* found);
/* Frees it; no call that uses it may still be queued. */
MK_API void mk_index_reporter_destroy(mk_index_reporter* reporter);

/* The ABI's version: raised whenever a struct's layout or a function's
 * signature or meaning changes incompatibly. A caller compiled against this
 * header checks mk_abi_version() == MK_ABI_VERSION before its first call. */
#define MK_ABI_VERSION 4
MK_API int mk_abi_version(void);

MK_API const char* mk_status_string(mk_status status);
/* JSON text: version, backends built, CUDA version and architectures. */
MK_API const char* mk_build_info(void);
/* sizeof the named argument struct ("mk_embedding_bag_fwd_args", ...), or 0:
 * lets foreign-function bindings check their struct layouts. */
MK_API size_t mk_struct_size(const char* name);

MK_API mk_status mk_embedding_bag_forward(const mk_embedding_bag_fwd_args* args, mk_device device,
                                          void* stream);

MK_API mk_status mk_embedding_bag_backward_workspace_size(const mk_embedding_bag_bwd_args* args,
                                                          mk_device device, size_t* bytes);
MK_API mk_status mk_embedding_bag_backward_plan(const mk_embedding_bag_bwd_args* args,
                                                void* workspace, size_t workspace_bytes,
                                                mk_device device, void* stream);
/* Host-visible number of distinct rows; on CUDA this synchronises the stream. */
MK_API mk_status mk_embedding_bag_backward_count(const mk_embedding_bag_bwd_args* args,
                                                 const void* workspace, mk_device device,
                                                 void* stream, int64_t* num_unique);
MK_API mk_status mk_embedding_bag_backward_reduce(const mk_embedding_bag_bwd_args* args,
                                                  void* workspace, size_t workspace_bytes,
                                                  mk_device device, void* stream);

MK_API mk_status mk_pk_select(const mk_pk_select_args* args, mk_device device, void* stream);

MK_API mk_status mk_pk_topk_fused(const mk_pk_topk_args* args, mk_device device, void* stream);

MK_API mk_status mk_pk_topk_backward_workspace_size(const mk_pk_topk_bwd_args* args, mk_device device,
                                                    size_t* bytes);
MK_API mk_status mk_pk_topk_backward(const mk_pk_topk_bwd_args* args, void* workspace,
                                     size_t workspace_bytes, mk_device device, void* stream);

/* Whether this build's CUDA kernels can run on CUDA device `device` (an
 * ordinal): MK_OK; MK_ERR_UNSUPPORTED when the build holds no kernel image
 * the device can load (compiled for other architectures) or has no CUDA
 * kernels; MK_ERR_CUDA when the device cannot be queried. Writes the device's
 * compute capability to *major and *minor when they are not NULL and the
 * device could be queried. Sets the current device back before returning. */
MK_API mk_status mk_cuda_device_check(int device, int* major, int* minor);

MK_API mk_status mk_sparse_row_update(const mk_sparse_row_update_args* args, mk_device device,
                                      void* stream);

#ifdef __cplusplus
}
#endif

#endif /* MEMKERNELS_H_ */
