/* The C ABI compiles as C and runs a small weighted embedding bag. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "memkernels.h"

int main(void) {
  if (mk_abi_version() != MK_ABI_VERSION) {
    fprintf(stderr, "test_c_abi: library ABI %d, header ABI %d\n", mk_abi_version(), MK_ABI_VERSION);
    return 1;
  }
  float values[3 * 2] = {1, 2, 3, 4, 5, 6};
  int32_t indices[2 * 2] = {0, 2, 1, 1};
  float weights[2 * 2] = {1.0f, 0.5f, 2.0f, -1.0f};
  float out[2 * 2];
  mk_embedding_bag_fwd_args a;
  memset(&a, 0, sizeof a);
  a.num_rows = 3;
  a.dim = 2;
  a.num_bags = 2;
  a.bag_size = 2;
  a.value_dtype = MK_F32;
  a.index_dtype = MK_I32;
  a.values = values;
  a.values_row_stride = 2;
  a.indices = indices;
  a.weights = weights;
  a.out = out;
  a.check_indices = 1;
  mk_status st = mk_embedding_bag_forward(&a, MK_CPU, NULL);
  const float want[4] = {1 + 2.5f, 2 + 3.0f, 6 - 3, 8 - 4};
  int bad = st != MK_OK;
  for (int i = 0; i < 4; ++i) bad |= fabsf(out[i] - want[i]) > 1e-6f;
  if (bad) {
    fprintf(stderr, "test_c_abi: wrong result (status %s)\n", mk_status_string(st));
    return 1;
  }
  if (strstr(mk_build_info(), "\"cpu\"") == NULL) {
    fprintf(stderr, "test_c_abi: build info lacks the CPU backend: %s\n", mk_build_info());
    return 1;
  }
  printf("test_c_abi: ok %s\n", mk_build_info());
  return 0;
}
