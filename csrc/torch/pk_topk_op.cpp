// Torch glue for product-key top-k scoring.
//
// Forward (stage 1, docs/pk_topk.md): the half-scores [H, T, n_keys] come from
// a library GEMM with fp32 output (fp64 for fp64 inputs); the core's selection
// kernel does both half top-ks and the k x k candidate top-k.
//
// Backward: the core's mk_pk_topk_backward, through the selected pairs only,
// on the embedding-bag machinery. With the key halves as one table of
// H * 2 * n_keys rows of Dk/2, each (token, head, half) is a bag of k rows
// weighted by grad_scores:
//   grad_query = embedding-bag forward over key rows,
//   grad_keys  = embedding-bag backward (atomic-free, deterministic) with the
//                query halves as grad_out.
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "checks.h"
#include "cpu_buffer_pool.h"
#include "ops.h"

namespace mkt {

namespace {

constexpr const char* kFwd = "memkernels.pk_topk";
constexpr const char* kBwd = "memkernels.pk_topk_backward";

void check_query_keys(const char* op, const at::Tensor& query, const at::Tensor& keys) {
  check_dim(op, query, "query", 3, "[T, H, Dk]");
  check_dim(op, keys, "keys", 4, "[H, 2, n_keys, Dk/2]");
  check_value_dtype(op, query, "query");
  TORCH_CHECK(keys.scalar_type() == query.scalar_type(), op,
              ": query and keys must have the same dtype; got ", query.scalar_type(), " and ",
              keys.scalar_type());
  check_same_device(op, query, "query", keys, "keys");
  TORCH_CHECK(query.device().is_cpu() || query.device().is_cuda(), op,
              ": tensors must be on a CPU or CUDA device; got ", query.device());
  const int64_t H = query.size(1), Dk = query.size(2);
  TORCH_CHECK(Dk % 2 == 0 && Dk > 0, op, ": query's last dimension Dk must be even and positive; got ",
              Dk);
  TORCH_CHECK(keys.size(0) == H && keys.size(1) == 2 && keys.size(3) == Dk / 2, op,
              ": keys must have shape [H=", H, ", 2, n_keys, Dk/2=", Dk / 2, "] for query of shape ",
              query.sizes(), "; got ", keys.sizes());
  TORCH_CHECK(keys.size(2) >= 1 && keys.size(2) <= MK_PK_MAX_KEYS, op,
              ": n_keys must be in [1, ", MK_PK_MAX_KEYS, "]; got ", keys.size(2));
}

at::ScalarType compute_dtype(const at::Tensor& query) {
  return query.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Batched half-scores a[H, T, half] @ b[H, half, n] in fp32 (fp64 for fp64).
// 16-bit CUDA inputs go through aten::bmm.dtype (tensor cores, fp32 output)
// where this torch has it; otherwise the inputs are upcast first. On the CPU
// the scores go into a pooled buffer (cpu_buffer_pool.h): a fresh one pays
// the kernel's page faults on every call, which took longer than the product
// itself (docs/perf/pk_topk.md, "CPU").
at::Tensor half_scores(const at::Tensor& a, const at::Tensor& b, at::ScalarType comp) {
  const bool half_precision = a.scalar_type() == at::kHalf || a.scalar_type() == at::kBFloat16;
  if (a.is_cuda() && half_precision) {
    static const auto bmm_dtype = c10::Dispatcher::singleton().findSchema({"aten::bmm", "dtype"});
    if (bmm_dtype.has_value())
      return bmm_dtype->typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::ScalarType)>().call(
          a, b, at::kFloat);
  }
  if (a.is_cpu()) {
    at::Tensor out = cpu_empty_pooled({a.size(0), a.size(1), b.size(2)}, comp);
    at::bmm_out(out, a.to(comp).contiguous(), b.to(comp));
    return out;
  }
  return at::matmul(a.to(comp), b.to(comp));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pk_topk_forward(const at::Tensor& query, const at::Tensor& keys,
                                                   int64_t k, c10::string_view impl, Backend be) {
  check_query_keys(kFwd, query, keys);
  const int64_t T = query.size(0), H = query.size(1), Dk = query.size(2), n = keys.size(2);
  const int64_t half = Dk / 2;
  TORCH_CHECK(k >= 1 && k <= n, kFwd, ": k must be in [1, n_keys=", n, "]; got ", k);
  if (be.device == MK_CUDA)
    TORCH_CHECK(k <= MK_PK_MAX_K_CUDA, kFwd, ": k must be at most ", MK_PK_MAX_K_CUDA,
                " on CUDA; got ", k);
  TORCH_CHECK(impl == "auto" || impl == "staged" || impl == "fused", kFwd,
              ": impl must be 'auto', 'staged' or 'fused'; got '", std::string(impl), "'");
  const at::ScalarType comp = compute_dtype(query);
  at::Tensor scores = at::empty({T, H, k}, query.options().dtype(at::kFloat));
  at::Tensor indices = at::empty({T, H, k}, query.options().dtype(at::kLong));
  if (impl == "fused") {
    const bool half_precision =
        query.scalar_type() == at::kHalf || query.scalar_type() == at::kBFloat16;
    TORCH_CHECK(be.device == MK_CUDA && half_precision && k <= MK_PK_FUSED_MAX_K, kFwd,
                ": impl='fused' needs CUDA tensors, float16 or bfloat16 inputs and k <= ",
                MK_PK_FUSED_MAX_K, "; got ", query.device(), ", ", query.scalar_type(), ", k=", k);
  }
  if (T == 0 || H == 0) return {scores.to(comp), indices};
  if (impl == "fused") {
    const at::Tensor q = query.contiguous(), kc = keys.contiguous();
    mk_pk_topk_args f{};
    f.num_tokens = T;
    f.num_heads = H;
    f.num_keys = n;
    f.half_dim = half;
    f.k = k;
    f.dtype = to_mk_dtype(query.scalar_type());
    f.query = q.data_ptr();
    f.keys = kc.data_ptr();
    f.out_scores = scores.data_ptr<float>();
    f.out_indices = indices.data_ptr<int64_t>();
    check_status(mk_pk_topk_fused(&f, be.device, be.stream), kFwd);
    return {scores, indices};
  }

  // Half-scores, head-major: [H, T, n].
  const at::Tensor q = query.transpose(0, 1);
  const at::Tensor s1 = half_scores(q.narrow(2, 0, half), keys.select(1, 0).transpose(1, 2), comp);
  const at::Tensor s2 = half_scores(q.narrow(2, half, half), keys.select(1, 1).transpose(1, 2), comp);
  const at::Tensor s1f = s1.to(at::kFloat).contiguous();
  const at::Tensor s2f = s2.to(at::kFloat).contiguous();

  mk_pk_select_args a{};
  a.num_tokens = T;
  a.num_heads = H;
  a.num_keys = n;
  a.k = k;
  a.scores1 = s1f.data_ptr<float>();
  a.scores2 = s2f.data_ptr<float>();
  a.scores_stride_t = n;
  a.scores_stride_h = T * n;
  a.out_scores = scores.data_ptr<float>();
  a.out_indices = indices.data_ptr<int64_t>();
  a.num_threads = at::get_num_threads();
  check_status(mk_pk_select(&a, be.device, be.stream), kFwd);

  if (comp == at::kDouble) {
    // The selection ran on fp32-rounded half-scores; report the selected
    // scores in full precision.
    const at::Tensor i1 = at::div(indices, n, "floor"), i2 = at::remainder(indices, n);
    scores = s1.permute({1, 0, 2}).gather(2, i1) + s2.permute({1, 0, 2}).gather(2, i2);
  }
  return {scores, indices};
}

std::tuple<at::Tensor, at::Tensor> pk_topk_backward(const at::Tensor& grad_scores,
                                                    const at::Tensor& query_in,
                                                    const at::Tensor& keys_in,
                                                    const at::Tensor& indices, Backend be) {
  check_query_keys(kBwd, query_in, keys_in);
  const int64_t T = query_in.size(0), H = query_in.size(1), Dk = query_in.size(2);
  const int64_t n = keys_in.size(2), half = Dk / 2;
  check_dim(kBwd, indices, "indices", 3, "[T, H, k]");
  const int64_t k = indices.size(2);
  TORCH_CHECK(indices.size(0) == T && indices.size(1) == H, kBwd, ": indices must have shape [", T,
              ", ", H, ", k]; got ", indices.sizes());
  TORCH_CHECK(indices.scalar_type() == at::kLong, kBwd, ": indices must be int64; got ",
              indices.scalar_type());
  TORCH_CHECK(grad_scores.sizes() == indices.sizes(), kBwd,
              ": grad_scores must have the shape of indices ", indices.sizes(), "; got ",
              grad_scores.sizes());
  check_same_device(kBwd, query_in, "query", indices, "indices");
  check_same_device(kBwd, query_in, "query", grad_scores, "grad_scores");
  const at::Tensor query = query_in.contiguous();
  const at::Tensor keys = keys_in.contiguous();
  if (k == 0) return {at::zeros_like(query), at::zeros_like(keys)};
  const at::Tensor g = grad_scores.to(acc_dtype(query.scalar_type())).contiguous();
  const at::Tensor idx = indices.contiguous();
  at::Tensor grad_query = at::empty_like(query);
  at::Tensor grad_keys = at::empty_like(keys);
  // The core's backward: the embedding bag over the key table [H * 2 * n,
  // Dk/2], its forward for the query, its atomic-free backward for the keys.
  mk_pk_topk_bwd_args a{};
  a.num_tokens = T;
  a.num_heads = H;
  a.num_keys = n;
  a.half_dim = half;
  a.k = k;
  a.dtype = to_mk_dtype(query.scalar_type());
  a.grad_scores = g.data_ptr();
  a.query = query.data_ptr();
  a.keys = keys.data_ptr();
  a.indices = idx.data_ptr<int64_t>();
  a.grad_query = grad_query.data_ptr();
  a.grad_keys = grad_keys.data_ptr();
  a.num_threads = at::get_num_threads();
  size_t bytes = 0;
  check_status(mk_pk_topk_backward_workspace_size(&a, be.device, &bytes), kBwd);
  at::Tensor ws = empty_workspace(int64_t(bytes), query.options());
  check_status(mk_pk_topk_backward(&a, ws.data_ptr(), bytes, be.device, be.stream), kBwd);
  return {grad_query, grad_keys};
}

}  // namespace mkt
