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

}  // namespace

int main() {
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
  return finish("test_core_cuda");
}
