// The direct loops for AVX2 with FMA (8 float32 lanes): direct_conv.cc with its AVX2 blocking.
#define JAXCONV_DIRECT_AVX2
#include "direct_conv.cc"
