// CUDA tests of the core through its C ABI: forward and backward (dense and
// row-sparse) on the GPU against the naive fp64 reference, bitwise
// determinism run to run, the device-side bad-index flag and the reporter.
// Exits 77 (CTest: skipped) when no GPU is present.
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "test_util.h"

namespace {

template <class T>
T* to_device(const std::vector<T>& h) {
  T* d = nullptr;
  cudaMalloc(&d, std::max<size_t>(1, h.size()) * sizeof(T));
  cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}

template <class T>
std::vector<T> to_host(const T* d, size_t n) {
  std::vector<T> h(n);
  cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
  return h;
}

struct Result {
  std::vector<float> out, gv, gw, sgv;
  std::vector<int64_t> rows;
};

Result run(const Problem<float>& pb) {
  const Case& c = pb.c;
  float* values = to_device(pb.values);
  float* weights = to_device(pb.weights);
  float* grad_out = to_device(pb.grad_out);
  int64_t* indices = to_device(pb.indices);
  float *out, *gv, *gw;
  cudaMalloc(&out, std::max<int64_t>(1, c.T * c.D) * sizeof(float));
  cudaMalloc(&gv, c.N * c.D * sizeof(float));
  cudaMalloc(&gw, std::max<int64_t>(1, c.T * c.B) * sizeof(float));
  int32_t* flag;
  cudaMalloc(&flag, sizeof(int32_t));
  cudaMemset(flag, 0, sizeof(int32_t));

  mk_embedding_bag_fwd_args f{};
  f.num_rows = c.N;
  f.dim = c.D;
  f.num_bags = c.T;
  f.bag_size = c.B;
  f.value_dtype = MK_F32;
  f.index_dtype = MK_I64;
  f.values = values;
  f.values_row_stride = c.D;
  f.indices = indices;
  f.weights = weights;
  f.out = out;
  f.check_indices = 1;
  f.error_flag = flag;
  CHECK(mk_embedding_bag_forward(&f, MK_CUDA, nullptr) == MK_OK, "forward failed");

  mk_embedding_bag_bwd_args b{};
  b.num_rows = c.N;
  b.dim = c.D;
  b.num_bags = c.T;
  b.bag_size = c.B;
  b.value_dtype = MK_F32;
  b.index_dtype = MK_I64;
  b.values = values;
  b.values_row_stride = c.D;
  b.indices = indices;
  b.weights = weights;
  b.grad_out = grad_out;
  b.grad_weights = gw;
  b.grad_values = gv;
  size_t bytes = 0;
  CHECK(mk_embedding_bag_backward_workspace_size(&b, MK_CUDA, &bytes) == MK_OK, "size failed");
  void* ws;
  cudaMalloc(&ws, bytes);
  CHECK(mk_embedding_bag_backward_plan(&b, ws, bytes, MK_CUDA, nullptr) == MK_OK, "plan failed");
  CHECK(mk_embedding_bag_backward_reduce(&b, ws, bytes, MK_CUDA, nullptr) == MK_OK, "reduce failed");

  Result r;
  r.out = to_host(out, size_t(c.T * c.D));
  r.gv = to_host(gv, size_t(c.N * c.D));
  r.gw = to_host(gw, size_t(c.T * c.B));
  CHECK(to_host(flag, 1)[0] == 0, "error flag set on valid indices");

  int64_t u = 0;
  b.grad_values = nullptr;
  CHECK(mk_embedding_bag_backward_plan(&b, ws, bytes, MK_CUDA, nullptr) == MK_OK, "plan failed");
  CHECK(mk_embedding_bag_backward_count(&b, ws, MK_CUDA, nullptr, &u) == MK_OK, "count failed");
  int64_t* rows;
  float* sgv;
  cudaMalloc(&rows, std::max<int64_t>(1, u) * sizeof(int64_t));
  cudaMalloc(&sgv, std::max<int64_t>(1, u * c.D) * sizeof(float));
  b.sparse_rows = rows;
  b.sparse_grads = sgv;
  CHECK(mk_embedding_bag_backward_reduce(&b, ws, bytes, MK_CUDA, nullptr) == MK_OK,
        "sparse reduce failed");
  r.rows = to_host(rows, size_t(u));
  r.sgv = to_host(sgv, size_t(u * c.D));
  CHECK(cudaDeviceSynchronize() == cudaSuccess, "CUDA error");
  for (void* p : {(void*)values, (void*)weights, (void*)grad_out, (void*)indices, (void*)out,
                  (void*)gv, (void*)gw, (void*)flag, ws, (void*)rows, (void*)sgv})
    cudaFree(p);
  return r;
}

void check_case(Case c) {
  Problem<float> pb(c, unsigned(c.N + c.D + c.T + c.B));
  std::vector<double> ref_out, ref_gv, ref_gw;
  pb.reference(ref_out, ref_gv, ref_gw);
  Result a = run(pb), b = run(pb);
  CHECK(max_rel_err(a.out, ref_out) < 1e-5, "forward error %g", max_rel_err(a.out, ref_out));
  CHECK(max_rel_err(a.gv, ref_gv) < 1e-5, "grad_values error %g", max_rel_err(a.gv, ref_gv));
  CHECK(max_rel_err(a.gw, ref_gw) < 1e-5, "grad_weights error %g", max_rel_err(a.gw, ref_gw));
  CHECK(bitwise_equal(a.out, b.out) && bitwise_equal(a.gv, b.gv) && bitwise_equal(a.gw, b.gw) &&
            bitwise_equal(a.sgv, b.sgv),
        "results differ between runs");
  std::vector<int64_t> want(pb.indices);
  std::sort(want.begin(), want.end());
  want.erase(std::unique(want.begin(), want.end()), want.end());
  CHECK(a.rows == want, "sparse rows are not the distinct sorted indices");
  bool same = true;
  for (size_t s = 0; s < a.rows.size() && same; ++s)
    same = std::memcmp(&a.sgv[s * size_t(c.D)], &a.gv[size_t(a.rows[s]) * size_t(c.D)],
                       sizeof(float) * size_t(c.D)) == 0;
  CHECK(same, "sparse gradients differ from the dense ones");
}

void check_bad_index_flag() {
  Problem<float> pb({10, 8, 4, 3, false}, 3);
  pb.indices[7] = 1 << 20;
  float* values = to_device(pb.values);
  float* weights = to_device(pb.weights);
  int64_t* indices = to_device(pb.indices);
  float* out;
  int32_t* flag;
  cudaMalloc(&out, 4 * 8 * sizeof(float));
  cudaMalloc(&flag, sizeof(int32_t));
  cudaMemset(flag, 0, sizeof(int32_t));
  mk_embedding_bag_fwd_args f{};
  f.num_rows = 10;
  f.dim = 8;
  f.num_bags = 4;
  f.bag_size = 3;
  f.value_dtype = MK_F32;
  f.index_dtype = MK_I64;
  f.values = values;
  f.values_row_stride = 8;
  f.indices = indices;
  f.weights = weights;
  f.out = out;
  f.check_indices = 1;
  f.error_flag = flag;
  CHECK(mk_embedding_bag_forward(&f, MK_CUDA, nullptr) == MK_OK, "forward failed");
  CHECK(to_host(flag, 1)[0] == 1, "bad index not flagged");
  CHECK(cudaDeviceSynchronize() == cudaSuccess, "CUDA error after a bad index");

  // The reporter (ABI 4): the first bad position and its value, published
  // without a host round trip; read once; a clean call publishes nothing.
  mk_index_reporter* rep = nullptr;
  CHECK(mk_index_reporter_create(0, &rep) == MK_OK && rep, "reporter not made");
  mk_index_report got{};
  int found = -1;
  CHECK(mk_index_reporter_poll(rep, &got, &found) == MK_OK && found == 0, "a fresh reporter has a report");
  pb.indices[10] = -3;  // a later bad position: the earlier one (7) is reported
  cudaMemcpy(indices, pb.indices.data(), pb.indices.size() * sizeof(int64_t), cudaMemcpyHostToDevice);
  f.error_flag = nullptr;
  f.reporter = rep;
  for (int call = 0; call < 300; ++call) {  // past the ring of slots: each is freed after its call
    CHECK(mk_embedding_bag_forward(&f, MK_CUDA, nullptr) == MK_OK, "reported forward failed");
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "CUDA error in the reported forward");
    CHECK(mk_index_reporter_poll(rep, &got, &found) == MK_OK && found == 1, "call %d: no report", call);
    CHECK(got.position == 7 && got.value == (1 << 20) && got.num_rows == 10 && got.bag_size == 3,
          "call %d: report (%lld, %lld, %lld, %lld)", call, (long long)got.position, (long long)got.value,
          (long long)got.num_rows, (long long)got.bag_size);
    CHECK(mk_index_reporter_poll(rep, &got, &found) == MK_OK && found == 0, "a report read twice");
  }
  // Two bad calls before a read: the earlier report is kept.
  CHECK(mk_embedding_bag_forward(&f, MK_CUDA, nullptr) == MK_OK, "forward failed");
  pb.indices[7] = 0;
  cudaMemcpy(indices, pb.indices.data(), pb.indices.size() * sizeof(int64_t), cudaMemcpyHostToDevice);
  CHECK(mk_embedding_bag_forward(&f, MK_CUDA, nullptr) == MK_OK, "forward failed");
  cudaDeviceSynchronize();
  CHECK(mk_index_reporter_poll(rep, &got, &found) == MK_OK && found == 1 && got.position == 7,
        "the earlier report was not kept");
  pb.indices[10] = 1;
  cudaMemcpy(indices, pb.indices.data(), pb.indices.size() * sizeof(int64_t), cudaMemcpyHostToDevice);
  CHECK(mk_embedding_bag_forward(&f, MK_CUDA, nullptr) == MK_OK, "forward failed");
  cudaDeviceSynchronize();
  CHECK(mk_index_reporter_poll(rep, &got, &found) == MK_OK && found == 0, "a clean call reported");
  mk_index_reporter_destroy(rep);
  cudaFree(values);
  cudaFree(weights);
  cudaFree(indices);
  cudaFree(out);
  cudaFree(flag);
}

// The CUDA selection gives the CPU's exact results (both equal brute force).
void check_pk_select(int64_t T, int64_t H, int64_t n, int64_t k) {
  PkProblem pb(T, H, n, k, unsigned(T * 5 + n + k));
  std::vector<float> ref_scores;
  std::vector<int64_t> ref_slots;
  pb.brute_force(ref_scores, ref_slots);
  float* d1 = to_device(pb.s1);
  float* d2 = to_device(pb.s2);
  float* out_s;
  int64_t* out_i;
  cudaMalloc(&out_s, std::max<int64_t>(1, T * H * k) * sizeof(float));
  cudaMalloc(&out_i, std::max<int64_t>(1, T * H * k) * sizeof(int64_t));
  mk_pk_select_args a = pb.args(d1, d2, out_s, out_i);
  CHECK(mk_pk_select(&a, MK_CUDA, nullptr) == MK_OK, "pk select failed");
  CHECK(to_host(out_s, size_t(T * H * k)) == ref_scores, "pk scores differ (n=%lld k=%lld)",
        (long long)n, (long long)k);
  CHECK(to_host(out_i, size_t(T * H * k)) == ref_slots, "pk slots differ (n=%lld k=%lld)",
        (long long)n, (long long)k);
  cudaFree(d1);
  cudaFree(d2);
  cudaFree(out_s);
  cudaFree(out_i);
}

// Every CUDA selection path (the warp path in each of its size classes of k,
// its radix fallback, and the general path for k > 128) gives the CPU
// selection's exact results, which the CPU tests hold to brute force.
// integer: scores in -4..4 (ties everywhere); else continuous scores.
// crowded: lanes 0..16 of every 128-element chunk get very low scores, so
// the warp path's first threshold lets too many through and its radix
// select decides (tests/core/test_warp_select_emu.cpp runs the same case).
void check_pk_select_vs_cpu(int64_t T, int64_t H, int64_t n, int64_t k, bool integer, bool crowded = false) {
  PkProblem pb(T, H, n, k, unsigned(T * 7 + n + k));
  if (!integer) {
    std::mt19937 rng(unsigned(n + k));
    std::normal_distribution<float> nd(0.f, 3.f);
    for (auto& x : pb.s1) x = nd(rng);
    for (auto& x : pb.s2) x = nd(rng);
  }
  if (crowded) {
    for (size_t e = 0; e < pb.s1.size(); ++e) {
      if (int64_t(e) % n % 128 < 68) pb.s1[e] = pb.s2[e] = -1000.f - float(e % 7);
    }
  }
  const size_t outs = size_t(T * H * k);
  std::vector<float> cpu_s(outs);
  std::vector<int64_t> cpu_i(outs);
  mk_pk_select_args c = pb.args(pb.s1.data(), pb.s2.data(), cpu_s.data(), cpu_i.data());
  CHECK(mk_pk_select(&c, MK_CPU, nullptr) == MK_OK, "cpu pk select failed");
  float* d1 = to_device(pb.s1);
  float* d2 = to_device(pb.s2);
  float* out_s;
  int64_t* out_i;
  cudaMalloc(&out_s, outs * sizeof(float));
  cudaMalloc(&out_i, outs * sizeof(int64_t));
  mk_pk_select_args a = pb.args(d1, d2, out_s, out_i);
  CHECK(mk_pk_select(&a, MK_CUDA, nullptr) == MK_OK, "pk select failed");
  CHECK(to_host(out_s, outs) == cpu_s, "pk scores differ from CPU (n=%lld k=%lld integer=%d)",
        (long long)n, (long long)k, int(integer));
  CHECK(to_host(out_i, outs) == cpu_i, "pk slots differ from CPU (n=%lld k=%lld integer=%d)",
        (long long)n, (long long)k, int(integer));
  cudaFree(d1);
  cudaFree(d2);
  cudaFree(out_s);
  cudaFree(out_i);
}

// The fused top-k kernel is exact against brute force on small-integer bf16
// inputs (every score exact, many ties), including odd sizes.
void check_pk_fused(int64_t T, int64_t H, int64_t n, int64_t half, int64_t k) {
  std::mt19937 rng(unsigned(T + n + half + k));
  std::uniform_int_distribution<int> ud(-3, 3);
  auto bf16 = [](float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    return uint16_t(u >> 16);
  };
  std::vector<float> q(size_t(T * H * 2 * half)), kv(size_t(H * 2 * n * half));
  for (auto& x : q) x = float(ud(rng));
  for (auto& x : kv) x = float(ud(rng));
  std::vector<uint16_t> q16(q.size()), k16(kv.size());
  for (size_t i = 0; i < q.size(); ++i) q16[i] = bf16(q[i]);
  for (size_t i = 0; i < kv.size(); ++i) k16[i] = bf16(kv[i]);
  // Half-scores and the brute-force answer through PkProblem's reference.
  PkProblem pb(T, H, n, k, 1);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < n; ++i) {
        float s1 = 0, s2 = 0;
        for (int64_t d = 0; d < half; ++d) {
          s1 += q[size_t((t * H + h) * 2 * half + d)] * kv[size_t(((h * 2 + 0) * n + i) * half + d)];
          s2 += q[size_t((t * H + h) * 2 * half + half + d)] * kv[size_t(((h * 2 + 1) * n + i) * half + d)];
        }
        pb.s1[size_t((t * H + h) * n + i)] = s1;
        pb.s2[size_t((t * H + h) * n + i)] = s2;
      }
  std::vector<float> ref_scores;
  std::vector<int64_t> ref_slots;
  pb.brute_force(ref_scores, ref_slots);
  uint16_t* dq = to_device(q16);
  uint16_t* dk = to_device(k16);
  float* out_s;
  int64_t* out_i;
  cudaMalloc(&out_s, size_t(T * H * k) * sizeof(float));
  cudaMalloc(&out_i, size_t(T * H * k) * sizeof(int64_t));
  mk_pk_topk_args a{};
  a.num_tokens = T;
  a.num_heads = H;
  a.num_keys = n;
  a.half_dim = half;
  a.k = k;
  a.dtype = MK_BF16;
  a.query = dq;
  a.keys = dk;
  a.out_scores = out_s;
  a.out_indices = out_i;
  CHECK(mk_pk_topk_fused(&a, MK_CUDA, nullptr) == MK_OK, "fused pk failed");
  CHECK(to_host(out_s, size_t(T * H * k)) == ref_scores, "fused pk scores differ (n=%lld k=%lld)",
        (long long)n, (long long)k);
  CHECK(to_host(out_i, size_t(T * H * k)) == ref_slots, "fused pk slots differ (n=%lld k=%lld)",
        (long long)n, (long long)k);
  for (void* p : {(void*)dq, (void*)dk, (void*)out_s, (void*)out_i}) cudaFree(p);
}

// CUDA row updates (Adam, row-wise Adagrad with clipping, SGD) agree with the
// CPU kernel; the bf16 stochastic rounding bits are the same on both.
void check_row_update(mk_row_optimizer kind, mk_dtype dtype) {
  const int64_t N = 100, D = 37, U = 20;
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  std::vector<float> table(size_t(N * D)), grads(size_t(U * D));
  for (auto& x : table) x = nd(rng);
  for (auto& x : grads) x = nd(rng);
  std::vector<uint16_t> table16(table.size());
  for (size_t i = 0; i < table.size(); ++i) {
    uint32_t u;
    std::memcpy(&u, &table[i], 4);
    table16[i] = uint16_t(u >> 16);
  }
  std::vector<int64_t> rows(static_cast<size_t>(U));
  for (int64_t i = 0; i < U; ++i) rows[size_t(i)] = i * 5;
  std::vector<float> s1(size_t(kind == MK_OPT_ADAGRAD_ROWWISE ? N : N * D), 0.5f), s2(size_t(N * D), 0.25f);
  mk_sparse_row_update_args a{};
  a.num_rows = N;
  a.dim = D;
  a.value_dtype = dtype;
  a.table_row_stride = D;
  a.num_updates = U;
  a.update.kind = kind;
  a.update.lr = 0.01;
  a.update.beta1 = 0.9;
  a.update.beta2 = 0.99;
  a.update.eps = 1e-6;
  a.update.weight_decay = 0.1;
  a.update.max_row_norm = kind == MK_OPT_ADAGRAD_ROWWISE ? 2.0 : 0.0;
  a.update.step = 3;
  a.update.stochastic_rounding = dtype == MK_BF16;
  a.update.seed = 5;
  // CPU
  std::vector<float> ct = table, c1 = s1, c2 = s2;
  std::vector<uint16_t> ct16 = table16;
  a.table = dtype == MK_BF16 ? (void*)ct16.data() : (void*)ct.data();
  a.rows = rows.data();
  a.grads = grads.data();
  a.update.state1 = c1.data();
  a.update.state2 = c2.data();
  CHECK(mk_sparse_row_update(&a, MK_CPU, nullptr) == MK_OK, "cpu update failed");
  // CUDA
  float* dt = to_device(table);
  uint16_t* dt16 = to_device(table16);
  int64_t* drows = to_device(rows);
  float* dg = to_device(grads);
  float* d1 = to_device(s1);
  float* d2 = to_device(s2);
  a.table = dtype == MK_BF16 ? (void*)dt16 : (void*)dt;
  a.rows = drows;
  a.grads = dg;
  a.update.state1 = d1;
  a.update.state2 = d2;
  CHECK(mk_sparse_row_update(&a, MK_CUDA, nullptr) == MK_OK, "cuda update failed");
  std::vector<float> gt = to_host(dt, table.size()), g1 = to_host(d1, s1.size());
  std::vector<uint16_t> gt16 = to_host(dt16, table16.size());
  double err = 0;
  for (size_t i = 0; i < table.size(); ++i) err = std::fmax(err, std::fabs(double(gt[i]) - ct[i]));
  for (size_t i = 0; i < s1.size(); ++i) err = std::fmax(err, std::fabs(double(g1[i]) - c1[i]));
  CHECK(err < 1e-5, "row update differs from CPU by %g (kind %d)", err, int(kind));
  if (dtype == MK_BF16) {
    int differ = 0;
    for (size_t i = 0; i < table16.size(); ++i) differ += gt16[i] != ct16[i];
    CHECK(differ <= int(table16.size() / 1000), "%d bf16 values differ from CPU", differ);
  }
  for (void* p : {(void*)dt, (void*)dt16, (void*)drows, (void*)dg, (void*)d1, (void*)d2}) cudaFree(p);
}

// The backward with an update applied inside the reduction equals the
// capacity form of the fp32 row gradients fed to mk_sparse_row_update, bit
// for bit (values, states, weights' gradient), on CUDA; and the CPU
// library's fused backward within rounding. fp32 or bf16 (as raw bits) tables,
// a share of the pairs on one hot row (split segments).
void check_fused_update(mk_row_optimizer kind, bool bf16, int64_t D, double max_row_norm) {
  const int64_t N = 300, T = 64, B = 8, P = T * B;
  std::mt19937 rng(unsigned(D * 7 + int(kind)));
  std::normal_distribution<float> nd;
  std::uniform_int_distribution<int64_t> ud(0, N - 1);
  std::vector<float> table(static_cast<size_t>(N * D)), grad_out(static_cast<size_t>(T * D)),
      weights(static_cast<size_t>(P));
  for (auto& x : table) x = nd(rng);
  for (auto& x : grad_out) x = nd(rng);
  for (auto& x : weights) x = nd(rng);
  std::vector<int64_t> idx(static_cast<size_t>(P));
  for (int64_t p = 0; p < P; ++p) idx[size_t(p)] = p % 3 == 0 ? 7 : ud(rng);  // row 7: ~170 pairs, 3 chunks
  auto bits16 = [](const std::vector<float>& v) {
    std::vector<uint16_t> b(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      uint32_t u;
      std::memcpy(&u, &v[i], 4);
      b[i] = uint16_t(u >> 16);
    }
    return b;
  };
  const std::vector<uint16_t> table16 = bits16(table), gout16 = bits16(grad_out);
  const bool rowwise = kind == MK_OPT_ADAGRAD_ROWWISE, full = kind == MK_OPT_ADAM;
  const std::vector<float> s1(size_t(rowwise ? N : N * D), 0.25f), s2(size_t(full ? N * D : N), 0.5f);
  mk_row_update u{};
  u.kind = kind;
  u.lr = 0.05;
  u.beta1 = 0.9;
  u.beta2 = 0.98;
  u.eps = 1e-6;
  u.weight_decay = 0.01;
  u.max_row_norm = max_row_norm;
  u.step = 4;
  u.stochastic_rounding = bf16;
  u.seed = 9;
  mk_embedding_bag_bwd_args b{};
  b.num_rows = N;
  b.dim = D;
  b.num_bags = T;
  b.bag_size = B;
  b.value_dtype = bf16 ? MK_BF16 : MK_F32;
  b.index_dtype = MK_I64;
  b.values_row_stride = D;
  const size_t vbytes = bf16 ? 2 : 4;
  struct Dev {
    void* table;
    float *s1, *s2, *gw;
  };
  float* dweights = to_device(weights);
  int64_t* didx = to_device(idx);
  void* dgout = bf16 ? (void*)to_device(gout16) : (void*)to_device(grad_out);
  auto fresh = [&]() {
    Dev d;
    d.table = bf16 ? (void*)to_device(table16) : (void*)to_device(table);
    d.s1 = to_device(s1);
    d.s2 = to_device(s2);
    cudaMalloc(&d.gw, P * sizeof(float));
    return d;
  };
  auto backward = [&](mk_embedding_bag_bwd_args& a, mk_device dev) {
    size_t bytes = 0;
    CHECK(mk_embedding_bag_backward_workspace_size(&a, dev, &bytes) == MK_OK, "size");
    void* ws = nullptr;
    std::vector<unsigned char> hws;
    if (dev == MK_CUDA) cudaMalloc(&ws, std::max<size_t>(1, bytes));
    else { hws.resize(bytes); ws = hws.data(); }
    CHECK(mk_embedding_bag_backward_plan(&a, ws, bytes, dev, nullptr) == MK_OK, "plan");
    CHECK(mk_embedding_bag_backward_reduce(&a, ws, bytes, dev, nullptr) == MK_OK, "reduce");
    if (dev == MK_CUDA) cudaFree(ws);
  };
  // The arguments of one backward: b with its inputs and weights' gradient.
  auto with = [&](void* table, const void* idx_p, const void* w_p, const void* gout_p, void* gw_p) {
    mk_embedding_bag_bwd_args x = b;
    x.values = table;
    x.indices = idx_p;
    x.weights = w_p;
    x.grad_out = gout_p;
    x.grad_weights = gw_p;
    return x;
  };
  // Fused on CUDA.
  Dev f = fresh();
  mk_row_update uf = u;
  uf.state1 = f.s1;
  uf.state2 = f.s2;
  mk_embedding_bag_bwd_args a = with(f.table, didx, dweights, dgout, f.gw);
  a.update = &uf;
  backward(a, MK_CUDA);
  // Capacity form, then the standalone update, on CUDA.
  Dev s = fresh();
  const int64_t cap = std::min(N, P);
  int64_t* drows;
  float* dgrads;
  cudaMalloc(&drows, cap * sizeof(int64_t));
  cudaMalloc(&dgrads, cap * D * sizeof(float));
  a = with(s.table, didx, dweights, dgout, s.gw);
  a.sparse_rows = drows;
  a.sparse_grads = dgrads;
  a.sparse_grads_acc = 1;
  a.sparse_capacity = cap;
  backward(a, MK_CUDA);
  mk_sparse_row_update_args ua{};
  ua.num_rows = N;
  ua.dim = D;
  ua.value_dtype = b.value_dtype;
  ua.table = s.table;
  ua.table_row_stride = D;
  ua.num_updates = cap;
  ua.rows = drows;
  ua.grads = dgrads;
  ua.update = u;
  ua.update.state1 = s.s1;
  ua.update.state2 = s.s2;
  CHECK(mk_sparse_row_update(&ua, MK_CUDA, nullptr) == MK_OK, "standalone update");
  const size_t tbytes = size_t(N * D) * vbytes;
  std::vector<unsigned char> tf(tbytes), ts(tbytes);
  cudaMemcpy(tf.data(), f.table, tbytes, cudaMemcpyDeviceToHost);
  cudaMemcpy(ts.data(), s.table, tbytes, cudaMemcpyDeviceToHost);
  CHECK(tf == ts, "fused table differs from capacity form + update (kind %d, D %lld)", int(kind), (long long)D);
  CHECK(to_host(f.s1, s1.size()) == to_host(s.s1, s1.size()) && to_host(f.s2, s2.size()) == to_host(s.s2, s2.size()),
        "fused states differ (kind %d, D %lld)", int(kind), (long long)D);
  CHECK(to_host(f.gw, size_t(P)) == to_host(s.gw, size_t(P)), "fused weights' gradient differs");
  CHECK(tf != std::vector<unsigned char>(tbytes, 0) && std::memcmp(tf.data(), bf16 ? (const void*)table16.data() : (const void*)table.data(), tbytes) != 0,
        "nothing was updated");
  // The CPU library's fused backward.
  std::vector<float> ct = table, c1 = s1, c2 = s2, cgw(static_cast<size_t>(P));
  std::vector<uint16_t> ct16 = table16;
  mk_row_update uc = u;
  uc.state1 = c1.data();
  uc.state2 = c2.data();
  a = with(bf16 ? (void*)ct16.data() : (void*)ct.data(), idx.data(), weights.data(),
           bf16 ? (const void*)gout16.data() : (const void*)grad_out.data(), cgw.data());
  a.update = &uc;
  backward(a, MK_CPU);
  int64_t differ = 0;
  double err = 0;
  for (int64_t i = 0; i < N * D; ++i) {
    float x, y;
    if (bf16) {
      uint32_t p = uint32_t(tf[size_t(2 * i)] | (tf[size_t(2 * i + 1)] << 8)) << 16, q = uint32_t(ct16[size_t(i)]) << 16;
      std::memcpy(&x, &p, 4);
      std::memcpy(&y, &q, 4);
    } else {
      std::memcpy(&x, &tf[size_t(4 * i)], 4);
      y = ct[size_t(i)];
    }
    differ += x != y;
    err = std::fmax(err, std::fabs(double(x) - y) / (1.0 + std::fabs(double(y))));
  }
  CHECK(err <= (bf16 ? 8e-3 : 1e-5), "fused table %g from the CPU's (kind %d, D %lld)", err, int(kind), (long long)D);
  CHECK(!bf16 || differ * 100 <= N * D, "%lld bf16 values differ from the CPU's", (long long)differ);
  for (void* p : {f.table, (void*)f.s1, (void*)f.s2, (void*)f.gw, s.table, (void*)s.s1, (void*)s.s2, (void*)s.gw,
                  (void*)drows, (void*)dgrads, (void*)dweights, (void*)didx, dgout})
    cudaFree(p);
}


// ---- CUDA against the CPU library, through the C ABI -----------------------
// Every value dtype and index dtype, row strides wider than D, dims on both
// sides of each tile shape the launchers pick (scalar or 16-byte vectors, one
// or four vectors a lane, with and without the column guard), and rows whose
// segments span 1, 2, 3 and more chunks beside rows read once: the forward,
// the dense gradient, the weights' gradient, the exact sparse rows, the
// capacity form and the fp32 sparse gradients must match the CPU's (which
// test_core holds to an fp64 reference) within the rounding of the values'
// dtype; rows and counts exactly.

// Host bits of the 16-bit dtypes. Inputs are multiples of 1/16 in [-4, 4]:
// exact in f16 and bf16, so both devices read the same numbers.
uint16_t f32_to_16(float x, mk_dtype dt) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if (dt == MK_BF16) return uint16_t(u >> 16);
  const uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a == 0) return uint16_t(sign);
  const int e = int(a >> 23) - 127 + 15;  // normal in f16 for these inputs
  return uint16_t(sign | (uint32_t(e) << 10) | ((a >> 13) & 0x3ffu));
}

float f16_bits_to_f32(uint16_t h, mk_dtype dt) {
  uint32_t u;
  if (dt == MK_BF16) {
    u = uint32_t(h) << 16;
  } else {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) {
      u = sign | 0x7f800000u | (m << 13);
    } else if (e != 0) {
      u = sign | ((e + 112) << 23) | (m << 13);
    } else {
      float f = std::ldexp(float(m), -24);
      std::memcpy(&u, &f, 4);
      u |= sign;
    }
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

size_t value_bytes(mk_dtype dt) { return dt == MK_F64 ? 8 : dt == MK_F32 ? 4 : 2; }
size_t acc_bytes(mk_dtype dt) { return dt == MK_F64 ? 8 : 4; }

// A [n] buffer of dtype dt (values' storage or, with acc, accumulation) from floats.
std::vector<unsigned char> encode(const std::vector<float>& x, mk_dtype dt, bool acc = false) {
  const size_t w = acc ? acc_bytes(dt) : value_bytes(dt);
  std::vector<unsigned char> b(x.size() * w);
  for (size_t i = 0; i < x.size(); ++i) {
    if (w == 8) {
      const double d = x[i];
      std::memcpy(&b[i * 8], &d, 8);
    } else if (w == 4) {
      std::memcpy(&b[i * 4], &x[i], 4);
    } else {
      const uint16_t h = f32_to_16(x[i], dt);
      std::memcpy(&b[i * 2], &h, 2);
    }
  }
  return b;
}

std::vector<double> decode(const std::vector<unsigned char>& b, mk_dtype dt, bool acc = false) {
  const size_t w = acc ? acc_bytes(dt) : value_bytes(dt);
  std::vector<double> x(b.size() / w);
  for (size_t i = 0; i < x.size(); ++i) {
    if (w == 8) {
      std::memcpy(&x[i], &b[i * 8], 8);
    } else if (w == 4) {
      float f;
      std::memcpy(&f, &b[i * 4], 4);
      x[i] = f;
    } else {
      uint16_t h;
      std::memcpy(&h, &b[i * 2], 2);
      x[i] = f16_bits_to_f32(h, dt);
    }
  }
  return x;
}

// Largest |a - b| over the largest |b| (1 at least); both sizes must agree.
double rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return 1e30;
  double err = 0, scale = 1;
  for (size_t i = 0; i < a.size(); ++i) {
    err = std::fmax(err, std::fabs(a[i] - b[i]));
    scale = std::fmax(scale, std::fabs(b[i]));
  }
  return err / scale;
}

// The rounding the two devices may differ by: sums in another order, then one
// rounding to the values' dtype.
double dtype_tol(mk_dtype dt) {
  switch (dt) {
    case MK_F64: return 1e-12;
    case MK_F32: return 2e-5;
    case MK_F16: return 2e-3;
    default: return 1.6e-2;
  }
}

struct DeviceBuf {
  void* p = nullptr;
  size_t n = 0;
  explicit DeviceBuf(size_t bytes) : n(bytes) { cudaMalloc(&p, bytes ? bytes : 1); }
  DeviceBuf(const std::vector<unsigned char>& h) : DeviceBuf(h.size()) {
    cudaMemcpy(p, h.data(), h.size(), cudaMemcpyHostToDevice);
  }
  ~DeviceBuf() { cudaFree(p); }
  std::vector<unsigned char> get() const {
    std::vector<unsigned char> h(n);
    cudaMemcpy(h.data(), p, n, cudaMemcpyDeviceToHost);
    return h;
  }
  DeviceBuf(const DeviceBuf&) = delete;
  DeviceBuf& operator=(const DeviceBuf&) = delete;
};

template <class T>
std::vector<unsigned char> as_bytes(const std::vector<T>& v) {
  std::vector<unsigned char> b(v.size() * sizeof(T));
  if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// The outputs of one device for one problem (byte buffers in their dtypes).
struct EbOutputs {
  std::vector<unsigned char> out, grad_values, grad_weights, sparse_grads, cap_grads, cap_grads_acc;
  std::vector<int64_t> sparse_rows, cap_rows;
  int64_t unique = -1, cap_count = -1;
};

struct EbProblem {
  mk_dtype vd;
  mk_index_dtype id;
  int64_t N, D, T, B, stride;
  std::vector<unsigned char> values, weights, grad_out, indices;
};

// Runs the forward and every backward form of p on `dev`: host buffers for
// the CPU, device buffers (and workspaces) for CUDA.
EbOutputs run_eb(const EbProblem& p, mk_device dev) {
  const bool cuda = dev == MK_CUDA;
  const int64_t P = p.T * p.B, cap = std::min(p.N, P);
  const size_t vb = value_bytes(p.vd), ab = acc_bytes(p.vd);
  std::vector<unsigned char> out_h(size_t(p.T * p.D) * vb), gv_h(size_t(p.N * p.D) * vb), gw_h(size_t(P) * ab);
  DeviceBuf values(p.values), weights(p.weights), grad_out(p.grad_out), indices(p.indices);
  DeviceBuf out(out_h.size()), gv(gv_h.size()), gw(gw_h.size());
  auto src = [&](const DeviceBuf& d, const std::vector<unsigned char>& h) -> const void* {
    return cuda ? d.p : static_cast<const void*>(h.data());
  };
  EbOutputs r;
  mk_embedding_bag_fwd_args f{};
  f.num_rows = p.N;
  f.dim = p.D;
  f.num_bags = p.T;
  f.bag_size = p.B;
  f.value_dtype = p.vd;
  f.index_dtype = p.id;
  f.values = src(values, p.values);
  f.values_row_stride = p.stride;
  f.indices = src(indices, p.indices);
  f.weights = src(weights, p.weights);
  f.out = cuda ? out.p : static_cast<void*>(out_h.data());
  CHECK(mk_embedding_bag_forward(&f, dev, nullptr) == MK_OK, "forward failed (device %d)", int(dev));
  r.out = cuda ? out.get() : out_h;

  mk_embedding_bag_bwd_args b{};
  b.num_rows = p.N;
  b.dim = p.D;
  b.num_bags = p.T;
  b.bag_size = p.B;
  b.value_dtype = p.vd;
  b.index_dtype = p.id;
  b.values = f.values;
  b.values_row_stride = p.stride;
  b.indices = f.indices;
  b.weights = f.weights;
  b.grad_out = src(grad_out, p.grad_out);
  size_t bytes = 0;
  CHECK(mk_embedding_bag_backward_workspace_size(&b, dev, &bytes) == MK_OK, "workspace size failed");
  std::vector<unsigned char> ws_h(bytes);
  DeviceBuf ws_d(bytes);
  void* ws = cuda ? ws_d.p : static_cast<void*>(ws_h.data());
  // Dense gradient and weights' gradient.
  b.grad_values = cuda ? gv.p : static_cast<void*>(gv_h.data());
  b.grad_weights = cuda ? gw.p : static_cast<void*>(gw_h.data());
  CHECK(mk_embedding_bag_backward_plan(&b, ws, bytes, dev, nullptr) == MK_OK, "plan failed");
  CHECK(mk_embedding_bag_backward_reduce(&b, ws, bytes, dev, nullptr) == MK_OK, "dense reduce failed");
  r.grad_values = cuda ? gv.get() : gv_h;
  r.grad_weights = cuda ? gw.get() : gw_h;
  // Exact sparse rows (the host learns U), weights' gradient not asked for.
  b.grad_values = nullptr;
  b.grad_weights = nullptr;
  CHECK(mk_embedding_bag_backward_plan(&b, ws, bytes, dev, nullptr) == MK_OK, "plan failed");
  CHECK(mk_embedding_bag_backward_count(&b, ws, dev, nullptr, &r.unique) == MK_OK, "count failed");
  {
    std::vector<int64_t> rows_h(static_cast<size_t>(std::max<int64_t>(r.unique, 0)));
    std::vector<unsigned char> g_h(rows_h.size() * size_t(p.D) * vb);
    DeviceBuf rows(rows_h.size() * 8), g(g_h.size());
    b.sparse_rows = cuda ? static_cast<int64_t*>(rows.p) : rows_h.data();
    b.sparse_grads = cuda ? g.p : static_cast<void*>(g_h.data());
    CHECK(mk_embedding_bag_backward_reduce(&b, ws, bytes, dev, nullptr) == MK_OK, "sparse reduce failed");
    if (cuda) {
      const std::vector<unsigned char> rb = rows.get();
      if (!rb.empty()) std::memcpy(rows_h.data(), rb.data(), rb.size());
    }
    r.sparse_rows = rows_h;
    r.sparse_grads = cuda ? g.get() : g_h;
  }
  // The capacity form, with the count on the device, in the values' dtype
  // and in fp32/fp64 (sparse_grads_acc).
  for (int acc = 0; acc < 2; ++acc) {
    std::vector<int64_t> rows_h(static_cast<size_t>(cap)), count_h(1, -7);
    std::vector<unsigned char> g_h(size_t(cap * p.D) * (acc ? ab : vb));
    DeviceBuf rows(rows_h.size() * 8), g(g_h.size()), count(8);
    b.sparse_rows = cuda ? static_cast<int64_t*>(rows.p) : rows_h.data();
    b.sparse_grads = cuda ? g.p : static_cast<void*>(g_h.data());
    b.sparse_capacity = cap;
    b.sparse_grads_acc = acc;
    b.sparse_count = cuda ? static_cast<int64_t*>(count.p) : count_h.data();
    CHECK(mk_embedding_bag_backward_plan(&b, ws, bytes, dev, nullptr) == MK_OK, "plan failed");
    CHECK(mk_embedding_bag_backward_reduce(&b, ws, bytes, dev, nullptr) == MK_OK, "capacity reduce failed");
    if (cuda) {
      const std::vector<unsigned char> rb = rows.get(), cb = count.get();
      if (!rb.empty()) std::memcpy(rows_h.data(), rb.data(), rb.size());
      std::memcpy(count_h.data(), cb.data(), 8);
    }
    if (acc) {
      r.cap_grads_acc = cuda ? g.get() : g_h;
    } else {
      r.cap_rows = rows_h;
      r.cap_count = count_h[0];
      r.cap_grads = cuda ? g.get() : g_h;
    }
  }
  CHECK(cudaDeviceSynchronize() == cudaSuccess, "CUDA error");
  return r;
}

// Indices: for each segment length in `lengths` a row of its own holding that
// many pairs, the rest uniform over the rows; positions shuffled.
EbProblem make_eb_problem(mk_dtype vd, mk_index_dtype id, int64_t N, int64_t D, int64_t T, int64_t B,
                          int64_t stride, const std::vector<int64_t>& lengths, unsigned seed) {
  EbProblem p{vd, id, N, D, T, B, stride, {}, {}, {}, {}};
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> q(-64, 64);  // multiples of 1/16 in [-4, 4]
  auto draw = [&](size_t n) {
    std::vector<float> x(n);
    for (auto& v : x) v = float(q(rng)) / 16.f;
    return x;
  };
  p.values = encode(draw(size_t(N * stride)), vd);
  p.weights = encode(draw(size_t(T * B)), vd, true);
  p.grad_out = encode(draw(size_t(T * D)), vd);
  const int64_t P = T * B;
  std::vector<int64_t> idx;
  int64_t row = 0;
  for (int64_t len : lengths) {
    for (int64_t j = 0; j < len && int64_t(idx.size()) < P; ++j) idx.push_back(row % N);
    ++row;
  }
  std::uniform_int_distribution<int64_t> ud(0, N - 1);
  while (int64_t(idx.size()) < P) idx.push_back(ud(rng));
  std::shuffle(idx.begin(), idx.end(), rng);
  if (id == MK_I64) {
    p.indices = as_bytes(idx);
  } else {
    std::vector<int32_t> i32(idx.begin(), idx.end());
    p.indices = as_bytes(i32);
  }
  return p;
}

void check_eb_vs_cpu(mk_dtype vd, mk_index_dtype id, int64_t N, int64_t D, int64_t T, int64_t B, int64_t stride,
                     const std::vector<int64_t>& lengths) {
  const EbProblem p = make_eb_problem(vd, id, N, D, T, B, stride, lengths, unsigned(N * 31 + D * 7 + T + B + vd));
  const EbOutputs c = run_eb(p, MK_CPU), g = run_eb(p, MK_CUDA);
  const double tol = dtype_tol(vd);
  const char* fmt = "%s differs from CPU by %g (dtype %d index %d N=%lld D=%lld T=%lld B=%lld stride=%lld)";
  auto report = [&](const char* what, double d) {
    CHECK(d <= tol, fmt, what, d, int(vd), int(id), (long long)N, (long long)D, (long long)T, (long long)B,
          (long long)stride);
  };
  report("forward", rel_diff(decode(g.out, vd), decode(c.out, vd)));
  report("dense gradient", rel_diff(decode(g.grad_values, vd), decode(c.grad_values, vd)));
  report("weights' gradient", rel_diff(decode(g.grad_weights, vd, true), decode(c.grad_weights, vd, true)));
  report("sparse gradient", rel_diff(decode(g.sparse_grads, vd), decode(c.sparse_grads, vd)));
  report("capacity gradient", rel_diff(decode(g.cap_grads, vd), decode(c.cap_grads, vd)));
  report("fp32 capacity gradient", rel_diff(decode(g.cap_grads_acc, vd, true), decode(c.cap_grads_acc, vd, true)));
  CHECK(g.unique == c.unique && g.sparse_rows == c.sparse_rows, "sparse rows differ from CPU (D=%lld B=%lld)",
        (long long)D, (long long)B);
  CHECK(g.cap_count == c.unique && c.cap_count == c.unique, "capacity count %lld / %lld, want %lld",
        (long long)g.cap_count, (long long)c.cap_count, (long long)c.unique);
  CHECK(g.cap_rows == c.cap_rows, "capacity rows differ from CPU (D=%lld B=%lld)", (long long)D, (long long)B);
  // Past the count: rows -1, gradients +0 (all bits zero), on both devices.
  bool padding = true;
  const size_t vb = value_bytes(vd);
  for (int64_t s = std::max<int64_t>(c.unique, 0); s < int64_t(g.cap_rows.size()); ++s) {
    padding = padding && g.cap_rows[size_t(s)] == -1;
    for (size_t e = size_t(s * D) * vb; e < size_t((s + 1) * D) * vb; ++e) padding = padding && g.cap_grads[e] == 0;
  }
  CHECK(padding, "capacity padding is not -1 / +0 (D=%lld B=%lld)", (long long)D, (long long)B);
}

void check_eb_sweep() {
  // Segment lengths around the chunk size C = max(64, 2B) rounded up to 32:
  // one chunk, exactly one, two, three, more.
  for (mk_dtype vd : {MK_F32, MK_BF16, MK_F16, MK_F64}) {
    for (mk_index_dtype id : {MK_I64, MK_I32}) {
      check_eb_vs_cpu(vd, id, 300, 64, 150, 7, 64, {1, 63, 64, 65, 128, 129, 200});  // C = 64
      check_eb_vs_cpu(vd, id, 1000, 37, 40, 33, 41, {66, 67, 132, 133, 300});        // C = 96, scalar path
    }
    // Tile shapes: D a multiple of the 16-byte vector or not; D past 64
    // vectors a lane (four vectors); D not a multiple of the tile (guard).
    for (int64_t D : {1, 8, 24, 256, 264, 520, 1032})
      check_eb_vs_cpu(vd, MK_I64, 200, D, 24, 5, D, {70, 1, 140});
    check_eb_vs_cpu(vd, MK_I64, 50, 16, 9, 1, 24, {});   // bags of one; a wider row stride
    check_eb_vs_cpu(vd, MK_I64, 7, 40, 30, 64, 40, {});  // few rows: every segment split
  }
}

// pk_topk's backward on CUDA against the CPU library: both gradients, fp32,
// bf16 and fp64, with selected slots repeated across tokens.
void check_pk_backward_vs_cpu(mk_dtype dt, int64_t T, int64_t H, int64_t n, int64_t half, int64_t k) {
  std::mt19937_64 rng(unsigned(T + H * 3 + n + half + k + dt));
  std::uniform_int_distribution<int> q(-64, 64);
  auto draw = [&](size_t m) {
    std::vector<float> x(m);
    for (auto& v : x) v = float(q(rng)) / 16.f;
    return x;
  };
  const std::vector<unsigned char> query = encode(draw(size_t(T * H * 2 * half)), dt),
                                   keys = encode(draw(size_t(H * 2 * n * half)), dt),
                                   grad = encode(draw(size_t(T * H * k)), dt, true);
  std::vector<int64_t> idx(size_t(T * H * k));
  std::uniform_int_distribution<int64_t> slot(0, n * n - 1), few(0, 3);
  for (auto& s : idx) s = few(rng) == 0 ? 5 % (n * n) : slot(rng);  // a quarter on one slot
  auto run = [&](mk_device dev, std::vector<unsigned char>& gq, std::vector<unsigned char>& gk) {
    const bool cuda = dev == MK_CUDA;
    DeviceBuf dq(query), dk(keys), dg(grad), di(as_bytes(idx)), oq(query.size()), ok(keys.size());
    std::vector<unsigned char> hq(query.size()), hk(keys.size());
    mk_pk_topk_bwd_args a{};
    a.num_tokens = T;
    a.num_heads = H;
    a.num_keys = n;
    a.half_dim = half;
    a.k = k;
    a.dtype = dt;
    a.grad_scores = cuda ? dg.p : grad.data();
    a.query = cuda ? dq.p : query.data();
    a.keys = cuda ? dk.p : keys.data();
    a.indices = cuda ? static_cast<const int64_t*>(di.p) : idx.data();
    a.grad_query = cuda ? oq.p : static_cast<void*>(hq.data());
    a.grad_keys = cuda ? ok.p : static_cast<void*>(hk.data());
    size_t bytes = 0;
    CHECK(mk_pk_topk_backward_workspace_size(&a, dev, &bytes) == MK_OK, "pk backward workspace failed");
    DeviceBuf dws(bytes);
    std::vector<unsigned char> hws(bytes);
    CHECK(mk_pk_topk_backward(&a, cuda ? dws.p : static_cast<void*>(hws.data()), bytes, dev, nullptr) == MK_OK,
          "pk backward failed (device %d)", int(dev));
    gq = cuda ? oq.get() : hq;
    gk = cuda ? ok.get() : hk;
  };
  std::vector<unsigned char> cq, ck, gq, gk;
  run(MK_CPU, cq, ck);
  run(MK_CUDA, gq, gk);
  const double dq = rel_diff(decode(gq, dt), decode(cq, dt)), dk = rel_diff(decode(gk, dt), decode(ck, dt));
  CHECK(dq <= dtype_tol(dt) && dk <= dtype_tol(dt),
        "pk backward differs from CPU: query %g keys %g (dtype %d T=%lld n=%lld half=%lld k=%lld)", dq, dk, int(dt),
        (long long)T, (long long)n, (long long)half, (long long)k);
}


// The row-sparse optimizer updates on CUDA against the CPU library, through
// the C ABI: standalone (mk_sparse_row_update) and inside the backward's
// reduction, for every rule, table dtype and option (bf16 states, the
// run-time step count and learning-rate scale read from device memory,
// clipping, weight decay, a column offset, stochastic rounding).
struct UpdateCase {
  mk_row_optimizer kind;
  mk_dtype vd;
  bool state_bf16, runtime, rounding;
  int64_t D;
  double max_row_norm, weight_decay;
  int64_t column_offset;
};

// The two optimizer states of a case: element dtypes (as value dtypes, or
// MK_F32 for fp32) and element counts.
struct StateShape {
  mk_dtype dt1, dt2;
  size_t n1, n2;
};

StateShape state_shape(const UpdateCase& c, int64_t N) {
  const bool rowwise1 = c.kind == MK_OPT_ADAGRAD_ROWWISE, has2 = c.kind == MK_OPT_ADAM || c.kind == MK_OPT_ADAM_ROWWISE;
  const size_t full = size_t(N * c.D), rows = size_t(N);
  const mk_dtype wide = c.vd == MK_F64 ? MK_F64 : MK_F32;
  StateShape s{wide, wide, 0, 0};
  if (c.kind != MK_OPT_SGD) {
    s.n1 = rowwise1 ? rows : full;
    if (!rowwise1 && c.state_bf16) s.dt1 = MK_BF16;
  }
  if (has2) {
    s.n2 = c.kind == MK_OPT_ADAM ? full : rows;
    if (c.kind == MK_OPT_ADAM && c.state_bf16) s.dt2 = MK_BF16;
  }
  return s;
}

// A table of N rows, its states and the update, run on `dev` either
// standalone (rows and their gradients given) or fused into the backward of a
// bag over the same table; returns the table, the states and (fused) the
// weights' gradient, as bytes.
struct UpdateResult {
  std::vector<unsigned char> table, s1, s2, grad_weights;
};

UpdateResult run_update(const UpdateCase& c, bool fused, mk_device dev) {
  const bool cuda = dev == MK_CUDA;
  const int64_t N = 64, D = c.D, U = 20, T = 24, B = 8;
  std::mt19937_64 rng(unsigned(D * 13 + c.kind * 5 + c.vd + fused));
  std::uniform_int_distribution<int> q(-64, 64);
  auto draw = [&](size_t n, float scale) {
    std::vector<float> x(n);
    for (auto& v : x) v = float(q(rng)) / 16.f * scale;
    return x;
  };
  const StateShape ss = state_shape(c, N);
  std::vector<unsigned char> table = encode(draw(size_t(N * D), 1.f), c.vd);
  std::vector<float> m1 = draw(ss.n1, 0.125f), m2 = draw(ss.n2, 0.125f);
  for (auto& v : m2) v = std::fabs(v) + 0.0625f;  // second moments are positive
  if (c.kind == MK_OPT_ADAGRAD_ROWWISE)
    for (auto& v : m1) v = std::fabs(v) + 0.0625f;
  std::vector<unsigned char> s1 = encode(m1, ss.dt1), s2 = encode(m2, ss.dt2);
  DeviceBuf dtable(table), ds1(s1), ds2(s2);
  const std::vector<int64_t> step_h(1, 3);
  const std::vector<float> scale_h(1, 0.5f);
  DeviceBuf dstep(as_bytes(step_h)), dscale(as_bytes(scale_h));
  mk_row_update u{};
  u.kind = c.kind;
  u.lr = 0.05;
  u.beta1 = 0.9;
  u.beta2 = 0.98;
  u.eps = 1e-6;
  u.weight_decay = c.weight_decay;
  u.max_row_norm = c.max_row_norm;
  u.step = c.runtime ? 1 : 3;  // with the run-time count, *step_ptr (3) must win
  u.stochastic_rounding = c.rounding;
  u.seed = 17;
  u.column_offset = c.column_offset;
  u.state_bf16 = c.state_bf16;
  u.state1 = ss.n1 ? (cuda ? ds1.p : static_cast<void*>(s1.data())) : nullptr;
  u.state2 = ss.n2 ? (cuda ? ds2.p : static_cast<void*>(s2.data())) : nullptr;
  if (c.runtime) {
    u.step_ptr = cuda ? static_cast<const int64_t*>(dstep.p) : step_h.data();
    u.lr_scale = cuda ? static_cast<const float*>(dscale.p) : scale_h.data();
  }
  void* tab = cuda ? dtable.p : static_cast<void*>(table.data());
  UpdateResult r;
  if (!fused) {
    std::vector<int64_t> rows(static_cast<size_t>(U));
    for (int64_t i = 0; i < U; ++i) rows[size_t(i)] = (i * 7) % N;  // distinct: 7 and 64 are coprime
    const std::vector<unsigned char> grads = encode(draw(size_t(U * D), 1.f), c.vd, true);
    DeviceBuf drows(as_bytes(rows)), dgrads(grads);
    mk_sparse_row_update_args a{};
    a.num_rows = N;
    a.dim = D;
    a.value_dtype = c.vd;
    a.table = tab;
    a.table_row_stride = D;
    a.num_updates = U;
    a.rows = cuda ? static_cast<const int64_t*>(drows.p) : rows.data();
    a.grads = cuda ? dgrads.p : grads.data();
    a.update = u;
    CHECK(mk_sparse_row_update(&a, dev, nullptr) == MK_OK, "row update failed (device %d)", int(dev));
  } else {
    const std::vector<unsigned char> weights = encode(draw(size_t(T * B), 1.f), c.vd, true),
                                     grad_out = encode(draw(size_t(T * D), 1.f), c.vd);
    std::vector<int64_t> idx(size_t(T * B));
    std::uniform_int_distribution<int64_t> ud(0, N - 1);
    for (size_t p = 0; p < idx.size(); ++p) idx[p] = p % 2 ? 5 : ud(rng);  // row 5: 96+ pairs, split
    DeviceBuf dw(weights), dg(grad_out), di(as_bytes(idx)), dgw(size_t(T * B) * acc_bytes(c.vd));
    std::vector<unsigned char> gw(size_t(T * B) * acc_bytes(c.vd));
    mk_embedding_bag_bwd_args b{};
    b.num_rows = N;
    b.dim = D;
    b.num_bags = T;
    b.bag_size = B;
    b.value_dtype = c.vd;
    b.index_dtype = MK_I64;
    b.values = tab;
    b.values_row_stride = D;
    b.indices = cuda ? di.p : static_cast<const void*>(idx.data());
    b.weights = cuda ? dw.p : weights.data();
    b.grad_out = cuda ? dg.p : grad_out.data();
    b.grad_weights = cuda ? dgw.p : static_cast<void*>(gw.data());
    b.update = &u;
    size_t bytes = 0;
    CHECK(mk_embedding_bag_backward_workspace_size(&b, dev, &bytes) == MK_OK, "workspace size failed");
    DeviceBuf dws(bytes);
    std::vector<unsigned char> hws(bytes);
    void* ws = cuda ? dws.p : static_cast<void*>(hws.data());
    CHECK(mk_embedding_bag_backward_plan(&b, ws, bytes, dev, nullptr) == MK_OK, "plan failed");
    CHECK(mk_embedding_bag_backward_reduce(&b, ws, bytes, dev, nullptr) == MK_OK, "fused update failed (device %d)",
          int(dev));
    r.grad_weights = cuda ? dgw.get() : gw;
  }
  CHECK(cudaDeviceSynchronize() == cudaSuccess, "CUDA error");
  r.table = cuda ? dtable.get() : table;
  r.s1 = cuda ? ds1.get() : s1;
  r.s2 = cuda ? ds2.get() : s2;
  return r;
}

void check_update_vs_cpu(const UpdateCase& c) {
  const StateShape ss = state_shape(c, 64);
  for (bool fused : {false, true}) {
    const UpdateResult h = run_update(c, fused, MK_CPU), g = run_update(c, fused, MK_CUDA);
    const double dt = rel_diff(decode(g.table, c.vd), decode(h.table, c.vd));
    const double d1 = rel_diff(decode(g.s1, ss.dt1), decode(h.s1, ss.dt1));
    const double d2 = rel_diff(decode(g.s2, ss.dt2), decode(h.s2, ss.dt2));
    const double dw = rel_diff(decode(g.grad_weights, c.vd, true), decode(h.grad_weights, c.vd, true));
    // Stochastic rounding draws the same bits on both devices; a value that
    // lands within rounding of a boundary may still round the other way.
    const double tol = std::fmax(dtype_tol(c.vd), c.state_bf16 ? dtype_tol(MK_BF16) : 0.0);
    CHECK(dt <= tol && d1 <= tol && d2 <= tol && dw <= dtype_tol(c.vd),
          "%s update differs from CPU: table %g states %g / %g weights' gradient %g (kind %d dtype %d bf16 states %d "
          "run-time step %d rounding %d D=%lld clip %g decay %g offset %lld)",
          fused ? "fused" : "standalone", dt, d1, d2, dw, int(c.kind), int(c.vd), int(c.state_bf16), int(c.runtime),
          int(c.rounding), (long long)c.D, c.max_row_norm, c.weight_decay, (long long)c.column_offset);
  }
}

void check_update_sweep() {
  const mk_row_optimizer kinds[] = {MK_OPT_SGD, MK_OPT_ADAM, MK_OPT_ADAGRAD_ROWWISE, MK_OPT_ADAM_ROWWISE};
  for (mk_row_optimizer kind : kinds) {
    for (mk_dtype vd : {MK_F32, MK_BF16, MK_F16, MK_F64}) {
      const bool half = vd == MK_BF16 || vd == MK_F16;
      check_update_vs_cpu({kind, vd, false, false, false, 64, 0.0, 0.0, 0});
      check_update_vs_cpu({kind, vd, false, true, half, 37, 1.5, 0.01, 0});
      if (vd != MK_F64) check_update_vs_cpu({kind, vd, true, true, half, 264, 0.0, 0.1, 4096});
    }
  }
}

// Random cases of the CUDA-against-CPU checks (test_core_cuda --fuzz COUNT
// [SEED]): shapes, dtypes, chunk structures and update options drawn at
// random, for hunting what the fixed cases miss.
void fuzz(long count, unsigned seed) {
  std::mt19937 rng(seed);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  const mk_dtype dts[] = {MK_F32, MK_BF16, MK_F16, MK_F64};
  const mk_row_optimizer kinds[] = {MK_OPT_SGD, MK_OPT_ADAM, MK_OPT_ADAGRAD_ROWWISE, MK_OPT_ADAM_ROWWISE};
  for (long i = 0; i < count; ++i) {
    const mk_dtype vd = dts[pick(0, 3)];
    const int64_t D = pick(0, 3) == 0 ? pick(1, 8) * 8 : pick(1, 300);
    if (i % 5 == 3) {  // product-key selection: both paths, fused, backward
      const int64_t n = pick(1, 3) == 1 ? pick(1, 40) : pick(1, 3000), k = pick(1, std::min<int64_t>(n, 200));
      check_pk_select_vs_cpu(pick(1, 4), pick(1, 3), n, k, pick(0, 1) == 1, n >= 128 && pick(0, 3) == 0);
      if (k <= 128 && n <= 300) check_pk_fused(pick(1, 40), pick(1, 2), n, pick(1, 80), k);  // brute force: n * n a row
      const mk_dtype bd = dts[pick(0, 3)];  // the backward takes no f16 here
      check_pk_backward_vs_cpu(bd == MK_F16 ? MK_F32 : bd, pick(1, 20), pick(1, 3),
                               std::min<int64_t>(n, 64), pick(1, 40), std::min<int64_t>(k, 16));
      continue;
    }
    if (i % 5 == 4) {
      const bool half = vd == MK_BF16 || vd == MK_F16;
      UpdateCase c{kinds[pick(0, 3)], vd, vd != MK_F64 && pick(0, 1) == 1, pick(0, 1) == 1,
                   half && pick(0, 1) == 1, D, pick(0, 1) ? 0.0 : 0.5 * double(pick(1, 6)),
                   pick(0, 1) ? 0.0 : 0.05, pick(0, 2) == 0 ? pick(0, 5000) : 0};
      check_update_vs_cpu(c);
      continue;
    }
    const int64_t N = pick(1, 3) == 1 ? pick(1, 8) : pick(1, 3000), B = pick(1, 3) == 1 ? pick(1, 3) : pick(1, 150);
    const int64_t T = pick(0, 60), stride = D + (pick(0, 2) == 0 ? pick(1, 9) : 0);
    std::vector<int64_t> lengths;
    for (int64_t s = pick(0, 5); s > 0; --s) lengths.push_back(pick(1, 500));
    check_eb_vs_cpu(vd, pick(0, 1) ? MK_I64 : MK_I32, N, D, T, B, stride, lengths);
    if (g_failures) {
      std::fprintf(stderr, "fuzz case %ld failed\n", i);
      return;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("test_core_cuda: no CUDA device, skipped\n");
    return 77;
  }
  for (int d = 0; d < n; ++d) {
    int major = -1, minor = -1, current = -1;
    CHECK(mk_cuda_device_check(d, &major, &minor) == MK_OK,
          "no kernel image for device %d (compute capability %d.%d)", d, major, minor);
    CHECK(major >= 7 && minor >= 0, "compute capability not reported");
    CHECK(cudaGetDevice(&current) == cudaSuccess && current == 0, "current device not restored");
  }
  CHECK(mk_cuda_device_check(n, nullptr, nullptr) == MK_ERR_CUDA, "a device past the last one was accepted");
  if (argc >= 3 && std::strcmp(argv[1], "--fuzz") == 0) {
    fuzz(std::atol(argv[2]), argc >= 4 ? unsigned(std::atol(argv[3])) : 1u);
    return finish("test_core_cuda --fuzz");
  }
  const Case cases[] = {{97, 1, 23, 7, false},     {97, 64, 23, 7, false}, {1000, 300, 40, 3, false},
                        {10, 33, 200, 3, true},    {5, 17, 1, 4, false},  {3, 8, 0, 2, false},
                        {4096, 1024, 64, 32, false}};
  for (const Case& c : cases) check_case(c);
  check_bad_index_flag();
  check_pk_select(5, 3, 37, 1);
  check_pk_select(5, 3, 37, 6);
  check_pk_select(2, 2, 37, 37);
  check_pk_select(3, 1, 300, 128);
  check_pk_select(2, 1, 300, 200);  // general path (k > 128)
  for (bool integer : {true, false}) {
    for (int64_t n : {500, 1000, 1500, 3000, 5000, 9000, 16384, 17000}) {
      for (int64_t k : {1, 32, 128}) check_pk_select_vs_cpu(3, 2, n, k, integer);
    }
    for (int64_t k : {5, 16, 17, 33, 64, 65, 100}) check_pk_select_vs_cpu(5, 3, 1024, k, integer);
    check_pk_select_vs_cpu(2, 1, 2000, 300, integer);
  }
  for (int64_t k : {16, 32, 64, 128}) check_pk_select_vs_cpu(2, 3, k == 128 ? 2048 : 1024, k, false, true);
  check_pk_select_vs_cpu(1, 2, 4096, 32, false, true);
  check_pk_fused(9, 3, 37, 9, 5);
  check_pk_fused(33, 2, 70, 64, 37);
  check_pk_fused(5, 1, 200, 65, 128);
  check_row_update(MK_OPT_SGD, MK_F32);
  check_row_update(MK_OPT_ADAM, MK_F32);
  check_row_update(MK_OPT_ADAGRAD_ROWWISE, MK_F32);
  check_row_update(MK_OPT_ADAM, MK_BF16);
  check_fused_update(MK_OPT_ADAM, true, 1032, 0.0);             // 16-byte vectors, two tiles
  check_fused_update(MK_OPT_ADAM_ROWWISE, false, 260, 0.5);     // clipping + a row statistic
  check_fused_update(MK_OPT_ADAGRAD_ROWWISE, false, 37, 0.0);   // scalar path
  check_fused_update(MK_OPT_SGD, true, 64, 1.0);
  check_eb_sweep();
  for (mk_dtype dt : {MK_F32, MK_BF16, MK_F64}) {
    check_pk_backward_vs_cpu(dt, 40, 2, 16, 32, 8);
    check_pk_backward_vs_cpu(dt, 9, 3, 37, 9, 5);
  }
  check_pk_fused(40, 2, 256, 16, 4);  // many key tiles, few kept: merges from either half of a tile
  check_pk_fused(70, 2, 300, 72, 32);    // v2 at k = 32: two blocks, the last partial; two dim chunks
  check_pk_fused(64, 1, 64, 16, 32);     // v2: one tile of keys, one block exactly
  check_pk_fused(7, 3, 33, 130, 1);      // v2: k = 1, a partial key tile, three dim chunks
  check_update_sweep();
  return finish("test_core_cuda");
}
