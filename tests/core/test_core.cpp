// CPU tests of the core through its C ABI only: forward and backward (dense
// and row-sparse) against a naive fp64 reference, determinism across runs and
// thread counts, and the error codes.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "test_util.h"

namespace {

template <class F>
mk_dtype dtype_of();
template <>
mk_dtype dtype_of<float>() {
  return MK_F32;
}
template <>
mk_dtype dtype_of<double>() {
  return MK_F64;
}

struct Grads {
  std::vector<int64_t> rows;
  std::vector<double> out, dense, sparse, gw;
};

template <class F>
mk_status run(const Problem<F>& pb, int threads, bool sparse, std::vector<F>& out,
              std::vector<F>& gv, std::vector<F>& gw, std::vector<int64_t>& rows) {
  const Case& c = pb.c;
  mk_embedding_bag_fwd_args f{};
  f.num_rows = c.N;
  f.dim = c.D;
  f.num_bags = c.T;
  f.bag_size = c.B;
  f.value_dtype = dtype_of<F>();
  f.index_dtype = MK_I64;
  f.values = pb.values.data();
  f.values_row_stride = c.D;
  f.indices = pb.indices.data();
  f.weights = pb.weights.data();
  out.assign(size_t(c.T * c.D), F(-1));
  f.out = out.data();
  f.check_indices = 1;
  f.num_threads = threads;
  mk_status st = mk_embedding_bag_forward(&f, MK_CPU, nullptr);
  if (st != MK_OK) return st;

  mk_embedding_bag_bwd_args b{};
  b.num_rows = c.N;
  b.dim = c.D;
  b.num_bags = c.T;
  b.bag_size = c.B;
  b.value_dtype = dtype_of<F>();
  b.index_dtype = MK_I64;
  b.values = pb.values.data();
  b.values_row_stride = c.D;
  b.indices = pb.indices.data();
  b.weights = pb.weights.data();
  b.grad_out = pb.grad_out.data();
  gw.assign(size_t(c.T * c.B), F(-1));
  b.grad_weights = gw.data();
  b.num_threads = threads;
  size_t bytes = 0;
  st = mk_embedding_bag_backward_workspace_size(&b, MK_CPU, &bytes);
  if (st != MK_OK) return st;
  std::vector<unsigned char> ws(bytes);
  st = mk_embedding_bag_backward_plan(&b, ws.data(), bytes, MK_CPU, nullptr);
  if (st != MK_OK) return st;
  if (sparse) {
    int64_t u = 0;
    st = mk_embedding_bag_backward_count(&b, ws.data(), MK_CPU, nullptr, &u);
    if (st != MK_OK) return st;
    rows.assign(size_t(u), -1);
    gv.assign(size_t(u * c.D), F(-1));
    b.sparse_rows = rows.data();
    b.sparse_grads = gv.data();
  } else {
    gv.assign(size_t(c.N * c.D), F(-1));
    b.grad_values = gv.data();
  }
  return mk_embedding_bag_backward_reduce(&b, ws.data(), bytes, MK_CPU, nullptr);
}

template <class F>
void check_case(Case c, double tol) {
  Problem<F> pb(c, unsigned(c.N * 131 + c.D * 7 + c.T * 3 + c.B));
  std::vector<double> ref_out, ref_gv, ref_gw;
  pb.reference(ref_out, ref_gv, ref_gw);
  std::vector<F> out, gv, gw, out2, gv2, gw2, sgv, sgw;
  std::vector<int64_t> rows, srows;
  CHECK(run(pb, 0, false, out, gv, gw, rows) == MK_OK, "dense run failed");
  CHECK(max_rel_err(out, ref_out) < tol, "forward error %g", max_rel_err(out, ref_out));
  CHECK(max_rel_err(gv, ref_gv) < tol, "grad_values error %g", max_rel_err(gv, ref_gv));
  CHECK(max_rel_err(gw, ref_gw) < tol, "grad_weights error %g", max_rel_err(gw, ref_gw));

  // Same bits with one thread and with three.
  CHECK(run(pb, 1, false, out2, gv2, gw2, rows) == MK_OK, "one-thread run failed");
  CHECK(bitwise_equal(out, out2) && bitwise_equal(gv, gv2) && bitwise_equal(gw, gw2),
        "results differ between thread counts");
  CHECK(run(pb, 3, false, out2, gv2, gw2, rows) == MK_OK, "three-thread run failed");
  CHECK(bitwise_equal(gv, gv2) && bitwise_equal(gw, gw2), "results differ between runs");

  // Sparse: distinct ascending rows whose gradients are the dense rows.
  CHECK(run(pb, 0, true, out2, sgv, sgw, srows) == MK_OK, "sparse run failed");
  std::vector<int64_t> want(pb.indices);
  std::sort(want.begin(), want.end());
  want.erase(std::unique(want.begin(), want.end()), want.end());
  CHECK(srows == want, "sparse rows are not the distinct sorted indices");
  bool same = bitwise_equal(sgw, gw);
  for (size_t s = 0; s < srows.size() && same; ++s)
    same = std::memcmp(&sgv[s * size_t(c.D)], &gv[size_t(srows[s]) * size_t(c.D)],
                       sizeof(F) * size_t(c.D)) == 0;
  CHECK(same, "sparse gradients differ from the dense ones");
}

void check_errors() {
  // The reporter: a CUDA object; on the CPU a forward ignores it, and polling
  // nothing is refused.
  int found = -1;
  CHECK(mk_index_reporter_poll(nullptr, nullptr, &found) == MK_ERR_INVALID_ARGUMENT, "poll of no reporter");
  CHECK(mk_struct_size("mk_index_report") == sizeof(mk_index_report), "mk_index_report size");
  Problem<float> pb({10, 4, 3, 2, false}, 1);
  pb.indices[5] = 10;
  std::vector<float> out, gv, gw;
  std::vector<int64_t> rows;
  mk_embedding_bag_fwd_args f{};
  f.num_rows = 10;
  f.dim = 4;
  f.num_bags = 3;
  f.bag_size = 2;
  f.values = pb.values.data();
  f.values_row_stride = 4;
  f.indices = pb.indices.data();
  f.index_dtype = MK_I64;
  f.weights = pb.weights.data();
  out.resize(12);
  f.out = out.data();
  f.check_indices = 1;
  int64_t bad = -1;
  f.bad_position = &bad;
  CHECK(mk_embedding_bag_forward(&f, MK_CPU, nullptr) == MK_ERR_INDEX_OUT_OF_RANGE,
        "bad index not reported");
  CHECK(bad == 5, "bad position %lld", (long long)bad);
  f.dim = 0;
  CHECK(mk_embedding_bag_forward(&f, MK_CPU, nullptr) == MK_ERR_INVALID_ARGUMENT, "dim 0 accepted");
  f.dim = 4;
  f.values_row_stride = 3;
  CHECK(mk_embedding_bag_forward(&f, MK_CPU, nullptr) == MK_ERR_INVALID_ARGUMENT,
        "row stride < dim accepted");
  CHECK(run(pb, 0, false, out, gv, gw, rows) == MK_ERR_INDEX_OUT_OF_RANGE,
        "backward plan accepted a bad index");

  mk_embedding_bag_bwd_args b{};
  b.num_rows = 10;
  b.dim = 4;
  b.num_bags = 3;
  b.bag_size = 2;
  b.values = pb.values.data();
  b.values_row_stride = 4;
  b.indices = pb.indices.data();
  b.weights = pb.weights.data();
  b.grad_out = pb.grad_out.data();
  size_t bytes = 0;
  CHECK(mk_embedding_bag_backward_workspace_size(&b, MK_CPU, &bytes) == MK_OK, "size failed");
  std::vector<unsigned char> ws(bytes);
  CHECK(mk_embedding_bag_backward_plan(&b, ws.data(), bytes - 1, MK_CPU, nullptr) ==
            MK_ERR_WORKSPACE_TOO_SMALL,
        "short workspace accepted");
  CHECK(std::string(mk_status_string(MK_ERR_INDEX_OUT_OF_RANGE)) == "index out of range",
        "status string");
}

// special: 0 for small-integer scores, NAN for real-valued ones, an infinity
// or -0.0 sprinkled over the integers otherwise.
void check_pk_select(int64_t T, int64_t H, int64_t n, int64_t k, float special = 0.0f) {
  PkProblem pb(T, H, n, k, unsigned(T * 7 + n * 3 + k));
  if (std::isnan(special)) pb.randomize(unsigned(n + k));
  else if (special != 0.0f) pb.sprinkle(special);
  std::vector<float> scores(size_t(T * H * k)), ref_scores;
  std::vector<int64_t> slots(size_t(T * H * k)), ref_slots;
  mk_pk_select_args a = pb.args(pb.s1.data(), pb.s2.data(), scores.data(), slots.data());
  CHECK(mk_pk_select(&a, MK_CPU, nullptr) == MK_OK, "pk select failed");
  pb.brute_force(ref_scores, ref_slots);
  // A +inf half absorbs the other half, so sums tie that the product-key
  // shortcut ranks by their halves (docs/pk_topk.md): the scores must match
  // brute force, the slots of tied infinite sums need not.
  const bool slots_exact = !(special > 0.0f && std::isinf(special));
  CHECK(scores == ref_scores && (!slots_exact || slots == ref_slots),
        "pk select differs from brute force (n=%lld k=%lld special=%g)", (long long)n, (long long)k,
        double(special));
  a.k = n + 1;
  CHECK(mk_pk_select(&a, MK_CPU, nullptr) == MK_ERR_INVALID_ARGUMENT, "k > n accepted");
}

void check_row_update() {
  std::vector<float> table(10 * 3, 1.0f), grads = {1, 2, 3, -1, -2, -3};
  std::vector<int64_t> rows = {2, 7};
  mk_sparse_row_update_args a{};
  a.num_rows = 10;
  a.dim = 3;
  a.value_dtype = MK_F32;
  a.table = table.data();
  a.table_row_stride = 3;
  a.num_updates = 2;
  a.rows = rows.data();
  a.grads = grads.data();
  a.update.kind = MK_OPT_SGD;
  a.update.lr = 0.5;
  CHECK(mk_sparse_row_update(&a, MK_CPU, nullptr) == MK_OK, "sgd update failed");
  CHECK(table[2 * 3 + 1] == 0.0f && table[7 * 3 + 2] == 2.5f && table[0] == 1.0f, "sgd update wrong");
  a.update.kind = MK_OPT_ADAM;  // no state, step 0
  CHECK(mk_sparse_row_update(&a, MK_CPU, nullptr) == MK_ERR_INVALID_ARGUMENT, "adam without state accepted");
  // The step read at run time (step_ptr) stands in for step; the scale multiplies lr.
  std::vector<float> m(10 * 3, 0.0f), v(10 * 3, 0.0f);
  const int64_t step = 1;
  const float half = 0.5f;
  a.update.state1 = m.data();
  a.update.state2 = v.data();
  a.update.step_ptr = &step;
  a.update.lr_scale = &half;
  std::fill(table.begin(), table.end(), 1.0f);
  CHECK(mk_sparse_row_update(&a, MK_CPU, nullptr) == MK_OK, "adam with step_ptr refused");
  // Adam's first step moves each touched element by lr (here 0.5 * 0.5) against its gradient's sign.
  CHECK(std::fabs(table[2 * 3] - 0.75f) < 1e-5f && std::fabs(table[7 * 3] - 1.25f) < 1e-5f, "adam step_ptr wrong");

  // The backward fused with an update checks the update as mk_sparse_row_update does.
  std::vector<int64_t> idx = {2, 7};
  std::vector<float> w = {1, 1}, gout = {1, 1, 1, 1, 1, 1};
  mk_row_update bad{};
  bad.kind = MK_OPT_ADAM;  // no state
  bad.step = 1;
  mk_embedding_bag_bwd_args b{};
  b.num_rows = 10;
  b.dim = 3;
  b.num_bags = 2;
  b.bag_size = 1;
  b.value_dtype = MK_F32;
  b.index_dtype = MK_I64;
  b.values = table.data();
  b.values_row_stride = 3;
  b.indices = idx.data();
  b.weights = w.data();
  b.grad_out = gout.data();
  b.update = &bad;
  size_t bytes = 0;
  CHECK(mk_embedding_bag_backward_workspace_size(&b, MK_CPU, &bytes) == MK_ERR_INVALID_ARGUMENT,
        "fused backward with a stateless adam accepted");
}

}  // namespace

int main() {
  const Case cases[] = {
      {97, 1, 23, 7, false}, {97, 5, 23, 1, false},  {97, 64, 23, 7, false},
      {1000, 300, 40, 3, false}, {10, 33, 200, 3, true}, {5, 17, 1, 4, false},
      {3, 8, 0, 2, false},
  };
  for (const Case& c : cases) {
    check_case<float>(c, 1e-5);
    check_case<double>(c, 1e-12);
  }
  check_errors();
  check_pk_select(5, 3, 37, 1);
  check_pk_select(5, 3, 37, 6);
  check_pk_select(2, 2, 37, 37);
  check_pk_select(3, 1, 100, 32);
  // The scan's block skip (blocks of 16 after the first k), the sorted-array
  // and the heap selections (k <= 64 and above), ties at every threshold,
  // infinities and -0.0.
  check_pk_select(4, 2, 200, 8);
  check_pk_select(2, 2, 200, 80);
  check_pk_select(3, 2, 150, 8, INFINITY);
  check_pk_select(3, 2, 150, 8, -INFINITY);
  check_pk_select(2, 1, 150, 70, INFINITY);
  check_pk_select(2, 1, 150, 70, -INFINITY);
  check_pk_select(8, 2, 300, 1, NAN);
  check_pk_select(8, 2, 300, 8, NAN);
  check_pk_select(4, 2, 300, 80, NAN);
  check_row_update();
  return finish("test_core");
}
