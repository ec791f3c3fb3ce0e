// Google Benchmark: ternary / INT4 / BF16 / nano matmul at the BitNet b1.58 2B-4T shapes,
// GEMV (n = 1, decode) and GEMM (n = 64, a prefill chunk), 1 and 2 threads, plus the
// machine's read bandwidth measured the same way every time (BM_ReadBandwidth: a
// streaming read of a 1 GiB buffer split over the same thread pool).
//
// Counters: weight_GB/s = stored weight bytes (QuantizedMatrix::nbytes) read per second,
// once per call; GMAC/s = rows * cols * n multiply-accumulates per second.
//   make bench     (or build/bench/ternlm_bench --benchmark_filter=GEMV)
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <tuple>
#include <utility>
#include <vector>

#include "formats/half.h"
#include "formats/int4.h"
#include "formats/q6.h"
#include "formats/quantized_matrix.h"
#include "kernels/attention.h"
#include "kernels/matmul.h"
#include "kernels/nano_matmul.h"
#include "model/kv_cache.h"
#include "runtime/targets.h"
#include "runtime/thread_pool.h"

namespace ternlm {
namespace {

struct Shape { size_t in, out; };
const Shape kShapes[] = {{2560, 2560}, {2560, 640}, {2560, 6912}, {6912, 2560}, {2560, 128256}};

// A random matrix built directly in its stored form (a 128256 x 2560 f32 source would
// need 1.3 GB).
std::unique_ptr<QuantizedMatrix> RandomMatrix(WeightFormat f, size_t rows, size_t cols, uint64_t seed) {
  if (f == WeightFormat::kBF16C) {  // the bf16 benchmark's values, packed by FromBF16C
    std::mt19937_64 rng(seed);
    std::vector<uint16_t> table(4096), bits(rows * cols);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    for (uint16_t& b : table) b = BF16FromF32(normal(rng));
    for (uint16_t& b : bits) b = table[rng() & 4095];
    return std::unique_ptr<QuantizedMatrix>(new QuantizedMatrix(FromBF16C(bits.data(), rows, cols)));
  }
  std::unique_ptr<QuantizedMatrix> fresh(new QuantizedMatrix(QuantizedMatrix::Allocate(f, rows, cols, 32)));
  QuantizedMatrix& m = *fresh;
  std::mt19937_64 rng(seed);
  uint8_t* d = m.mutable_data();
  const size_t bytes = rows * m.row_bytes();
  // bf16 weights like a model's: normal(0, 0.02), drawn from a table of 4096 values
  // (random bit patterns would include subnormals, which cost microcode assists on Intel).
  std::vector<uint16_t> bf16_table(4096);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (uint16_t& b : bf16_table) b = BF16FromF32(normal(rng));
  for (size_t i = 0; i + 8 <= bytes; i += 8) {
    uint64_t v = rng();
    if (f == WeightFormat::kTernary) {  // every 2-bit field in {0, 1, 2}
      const uint64_t both = v & (v >> 1) & 0x5555555555555555ull;  // fields equal to 3
      v &= ~(both << 1);
    }
    if (f == WeightFormat::kInt8)  // no byte 0x80 (-128 is not an int8 weight): set bit 0 of negative bytes
      v |= (v & 0x8080808080808080ull) >> 7;
    if (f == WeightFormat::kBF16) {
      uint64_t packed = 0;
      for (int k = 0; k < 4; ++k) packed |= uint64_t(bf16_table[(v >> (12 * k)) & 4095]) << (16 * k);
      v = packed;
    }
    std::memcpy(d + i, &v, 8);
  }
  if (f == WeightFormat::kTernary || f == WeightFormat::kInt8) {
    float* mult = m.mutable_row_multiplier();
    for (size_t r = 0; r < rows; ++r) mult[r] = 0.01f;
  }
  if (f == WeightFormat::kInt4) {  // fp16 scales/mins inside the tiles (formats/int4.h)
    const uint16_t sc = F16FromF32(0.01f), mn = F16FromF32(-0.08f);
    const size_t group = size_t(m.group_size());
    for (size_t r = 0; r < rows; ++r)
      for (size_t g = 0; g < m.groups_per_row(); ++g) {
        const size_t o = Int4ScaleByte(m.padded_cols(), group, r, g);
        std::memcpy(d + o, &sc, 2);
        std::memcpy(d + o + 32, &mn, 2);
      }
  }
  if (f == WeightFormat::kQ6) {  // fp16 super-block scales inside the tiles (formats/q6.h)
    const uint16_t sc = F16FromF32(0.001f);
    for (size_t r = 0; r < rows; ++r)
      for (size_t c = 0; c < m.padded_cols(); c += kQ6SuperCols) std::memcpy(d + Q6Locate(m.padded_cols(), r, c).d, &sc, 2);
  }
  return fresh;
}

// RandomMatrix, cached across benchmarks.
const QuantizedMatrix& Matrix(WeightFormat f, size_t rows, size_t cols) {
  static std::map<std::tuple<int, size_t, size_t>, std::unique_ptr<QuantizedMatrix>> cache;
  auto& slot = cache[{int(f), rows, cols}];
  if (slot) return *slot;
  // Keep at most one of the big matrices alive.
  for (auto it = cache.begin(); it != cache.end();)
    it = (it->second && it->second->nbytes() > (64u << 20)) ? cache.erase(it) : std::next(it);
  auto& fresh = cache[{int(f), rows, cols}];
  fresh = RandomMatrix(f, rows, cols, 42);
  return *fresh;
}

void BM_MatMul(benchmark::State& state, WeightFormat f, size_t n) {
  const Shape shape = kShapes[state.range(0)];
  const size_t threads = size_t(state.range(1));
  const QuantizedMatrix& w = Matrix(f, shape.out, shape.in);
  std::vector<float> x(n * shape.in), y(n * shape.out);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  for (float& v : x) v = normal(rng);
  const std::shared_ptr<ThreadPool> held = AcquirePool(threads);
  ThreadPool& pool = *held;
  MatMul(w, x.data(), n, y.data(), pool);  // warm up scratch and workers
  for (auto _ : state) {
    MatMul(w, x.data(), n, y.data(), pool);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(std::string(FormatName(f)) + " " + std::to_string(shape.in) + "->" +
                 std::to_string(shape.out) + " n=" + std::to_string(n) + " t=" + std::to_string(threads));
  state.counters["weight_GB/s"] =
      benchmark::Counter(double(w.nbytes()) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GMAC/s"] = benchmark::Counter(double(shape.in) * shape.out * n / 1e9,
                                                benchmark::Counter::kIsIterationInvariantRate);
}

// nano (formats/nano.h) at `hundredths` / 100 bits per weight: random signs, rank as
// python/ternlm/nano.py picks it (r ~ bits * out * in / (out + in), less the scales).
const QuantizedMatrix& NanoMatrix(size_t rows, size_t cols, int hundredths) {
  static std::map<std::tuple<size_t, size_t, int>, std::unique_ptr<QuantizedMatrix>> cache;
  auto& slot = cache[{rows, cols, hundredths}];
  if (slot) return *slot;
  const double budget_bits = hundredths / 100.0 * double(rows) * double(cols);
  const size_t rank = size_t((budget_bits - 16.0 * double(rows + cols)) / double(rows + cols)) / 64 * 64;
  std::mt19937_64 rng(7);
  std::vector<int8_t> u(rows * rank), v(cols * rank);
  for (int8_t& b : u) b = (rng() & 1) ? 1 : -1;
  for (int8_t& b : v) b = (rng() & 1) ? 1 : -1;
  std::vector<float> s_out(rows, 0.01f), s_in(cols, 1.0f);
  slot.reset(new QuantizedMatrix(FromNano(u.data(), v.data(), s_out.data(), s_in.data(), rows, cols, rank)));
  return *slot;
}

// BM_MatMul for nano: the whole two-stage matmul (kernels/nano_matmul.cc); rank in the label.
void BM_NanoMatMul(benchmark::State& state, int hundredths, size_t n) {
  const Shape shape = kShapes[state.range(0)];
  const size_t threads = size_t(state.range(1));
  const QuantizedMatrix& w = NanoMatrix(shape.out, shape.in, hundredths);
  std::vector<float> x(n * shape.in), y(n * shape.out);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  for (float& v : x) v = normal(rng);
  const std::shared_ptr<ThreadPool> held = AcquirePool(threads);
  MatMul(w, x.data(), n, y.data(), *held);
  for (auto _ : state) {
    MatMul(w, x.data(), n, y.data(), *held);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel("nano:0." + std::to_string(hundredths) + " rank " +
                 std::to_string(w.group_size()) + " " + std::to_string(shape.in) + "->" +
                 std::to_string(shape.out) + " n=" + std::to_string(n) + " t=" + std::to_string(threads));
  state.counters["weight_GB/s"] =
      benchmark::Counter(double(w.nbytes()) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GMAC/s"] = benchmark::Counter(double(shape.in) * shape.out * n / 1e9,
                                                benchmark::Counter::kIsIterationInvariantRate);
}

// The two ways to sum activations selected by sign bits, one thread, one 1024 x 2560 bit
// matrix (a stage-1 V^T at 0.8 bits of a 2560 x 2560 matrix): int8 activations through the
// u8 select + vpsadbw kernel (the one MatMul runs; this call also biases the activations,
// O(n)), and f32 activations with sign-selected adds (16 lanes per vector).
void BM_NanoSigned(benchmark::State& state) {
  const bool f32 = state.range(0) != 0;
  const size_t rows = 1024, n = 2560;
  std::mt19937_64 rng(3);
  std::vector<uint8_t> bits(rows * n / 8);
  for (uint8_t& b : bits) b = uint8_t(rng());
  std::vector<int8_t> q(n);
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) {
    q[i] = int8_t(int(rng() % 255) - 127);
    x[i] = float(q[i]) * 0.01f;
  }
  std::vector<int32_t> out(rows);
  std::vector<float> outf(rows);
  for (auto _ : state) {
    if (f32) {
      for (size_t r = 0; r < rows; ++r) outf[r] = NanoBitDotFloat(bits.data() + r * n / 8, n, x.data());
    } else {
      NanoBitDotsForTest(bits.data(), rows, n, q.data(), 1, out.data());
    }
    benchmark::DoNotOptimize(out.data());
    benchmark::DoNotOptimize(outf.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(f32 ? "f32 sign-selected adds" : "int8 select + SumsOf8");
  state.counters["Gsigns/s"] =
      benchmark::Counter(double(rows) * double(n) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// Sum of n 64-bit words, 8 independent accumulators; compiled for AVX-512, AVX2 and
// baseline and picked at load time, so it reads with the widest loads the CPU has.
__attribute__((target_clones("avx512f", "avx2", "default"), noinline))
uint64_t SumWords(const uint64_t* p, size_t n) {
  uint64_t a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (size_t i = 0; i + 8 <= n; i += 8)
    for (size_t k = 0; k < 8; ++k) a[k] += p[i + k];
  return a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
}

// A decode step's layer matrices, out of cache: `layers` transformer layers of the 2B-4T
// shape as the engine multiplies them (q/k/v fused 2560->3840, o 2560->2560, gate/up fused
// 2560->13824, down 6912->2560), one GEMV each, in order. Each matrix is read once per
// pass, from memory (the stack is far larger than the L3), as in decode; the per-call
// work (activation quantization, fork/join, the prefetchers' ramp at each new matrix)
// is included. Compare weight_GB/s with BM_ReadBandwidth at the same thread count.
// prefetch: the kernels' software prefetch distance in bytes (runtime/targets.h), -1 for
// this CPU's default; compare prefetch:0 with prefetch:4096 to see whether it helps here.
void BM_LayerStack(benchmark::State& state, WeightFormat f, size_t layers) {
  const size_t threads = size_t(state.range(0));
  const size_t prefetch_before = PrefetchDistance();
  SetPrefetchDistance(state.range(1) < 0 ? DefaultPrefetchDistance() : size_t(state.range(1)));
  static std::map<int, std::vector<std::unique_ptr<QuantizedMatrix>>> stacks;
  static const Shape kLayer[] = {{2560, 3840}, {2560, 2560}, {2560, 13824}, {6912, 2560}};
  auto& stack = stacks[int(f)];
  // TERNLM_BENCH_LAYER_MATRIX=0..3 keeps only that matrix of each layer (q/k/v, o, gate/up,
  // down), with 4x the layers, to see which shape streams worse.
  const char* only_env = std::getenv("TERNLM_BENCH_LAYER_MATRIX");
  const int only = only_env ? std::atoi(only_env) : -1;
  if (stack.empty())
    for (size_t l = 0; l < layers * (only >= 0 ? 4 : 1); ++l)
      for (int k = 0; k < 4; ++k)
        if (only < 0 || k == only)
          stack.push_back(RandomMatrix(f, kLayer[k].out, kLayer[k].in, 1000 + stack.size()));
  std::vector<float> x(6912), y(13824);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  for (float& v : x) v = normal(rng);
  const std::shared_ptr<ThreadPool> held = AcquirePool(threads);
  ThreadPool& pool = *held;
  size_t bytes = 0;
  for (const auto& m : stack) bytes += m->nbytes();
  for (const auto& m : stack) MatMul(*m, x.data(), 1, y.data(), pool);  // warm up
  for (auto _ : state) {
    for (const auto& m : stack) MatMul(*m, x.data(), 1, y.data(), pool);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(std::string(FormatName(f)) + " " + std::to_string(layers) + " layers, " +
                 std::to_string(bytes >> 20) + " MiB, t=" + std::to_string(threads) +
                 ", prefetch " + std::to_string(PrefetchDistance()));
  SetPrefetchDistance(prefetch_before);
  state.counters["weight_GB/s"] =
      benchmark::Counter(double(bytes) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// Decode attention over a filled KV cache of the 2B-4T shape (30 layers, 5 KV heads of
// 128, 4 query heads per KV head), one query token at context length range(0): one
// AttendPartial task per KV head and layer (the engine also splits the positions over
// threads when there are few KV heads; this does not). The cache (2 x 30 x 5 x len x 128
// f32) is far larger than the L3, so this is the stream decode pays per token on top of
// the weights. f16:1 is the half-precision cache. kv_GB/s: cache bytes read per second;
// compare times between f16:0 and f16:1.
void BM_Attend(benchmark::State& state) {
  constexpr size_t kLayers = 30, kKvHeads = 5, kGroup = 4, kHeadDim = 128;
  const size_t len = size_t(state.range(0)), threads = size_t(state.range(1));
  const KvDtype dtype = state.range(2) ? KvDtype::kF16 : KvDtype::kF32;
  static std::map<std::pair<size_t, KvDtype>, std::unique_ptr<KvCache>> caches;
  auto& cache = caches[{len, dtype}];
  if (!cache) {
    cache.reset(new KvCache(kLayers, kKvHeads, len, kHeadDim, dtype));
    std::mt19937 rng(7);
    std::normal_distribution<float> normal;
    std::vector<float> k(kHeadDim), v(kHeadDim);
    for (size_t l = 0; l < kLayers; ++l)
      for (size_t h = 0; h < kKvHeads; ++h)
        for (size_t t = 0; t < len; ++t) {
          for (size_t i = 0; i < kHeadDim; ++i) k[i] = normal(rng), v[i] = normal(rng);
          cache->Store(l, h, t, k.data(), v.data());
        }
  }
  std::vector<float> q(kKvHeads * kGroup * kHeadDim), out(q.size());
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  for (float& v : q) v = normal(rng);
  const size_t stride = AttendScoresStride(0, len);
  std::vector<float> scores(threads * kGroup * stride), stats(threads * 2 * kGroup);
  const std::shared_ptr<ThreadPool> held = AcquirePool(threads);
  ThreadPool& pool = *held;
  const float scale = 1.0f / std::sqrt(float(kHeadDim));
  auto step = [&] {
    for (size_t l = 0; l < kLayers; ++l)
      pool.Run(kKvHeads, [&](size_t h, size_t thread) {
        AttendArgs a;
        a.q = q.data() + h * kGroup * kHeadDim;
        a.q_stride = kGroup * kHeadDim;
        a.tokens = 1;
        a.group = kGroup;
        a.first_len = len;
        a.keys = cache->Keys(l, h);
        a.values = cache->Values(l, h);
        a.f16 = cache->f16();
        a.begin = 0;
        a.end = len;
        a.head_dim = kHeadDim;
        a.scale = scale;
        a.scores = scores.data() + thread * kGroup * stride;
        a.out = out.data() + h * kGroup * kHeadDim;
        a.out_stride = kGroup * kHeadDim;
        a.row_max = stats.data() + thread * 2 * kGroup;
        a.row_sum = a.row_max + kGroup;
        AttendPartial(a);
      });
  };
  step();
  for (auto _ : state) {
    step();
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["kv_GB/s"] = benchmark::Counter(double(cache->nbytes()) / 1e9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

void StackArgs(benchmark::internal::Benchmark* b) {
  b->ArgsProduct({{1, 2}, {-1, 0, 4096}})->ArgNames({"threads", "prefetch"})->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

void ShapeArgs(benchmark::internal::Benchmark* b) {
  for (int s = 0; s < int(sizeof(kShapes) / sizeof(kShapes[0])); ++s)
    for (int t : {1, 2}) b->Args({s, t});
  b->ArgNames({"shape", "threads"})->UseRealTime()->Unit(benchmark::kMicrosecond);
}

// Streaming read of 1 GiB, split into contiguous chunks over the pool's threads.
void BM_ReadBandwidth(benchmark::State& state) {
  constexpr size_t kBytes = size_t(1) << 30;
  static AlignedBytes buffer(kBytes);  // zeroed pages, touched once here
  static bool filled = false;
  if (!filled) {
    std::memset(buffer.data(), 1, kBytes);
    filled = true;
  }
  const size_t threads = size_t(state.range(0));
  const std::shared_ptr<ThreadPool> held = AcquirePool(threads);
  ThreadPool& pool = *held;
  const size_t chunks = threads * 16, per = kBytes / chunks;
  std::vector<uint64_t> sums(chunks);
  for (auto _ : state) {
    pool.Run(chunks, [&](size_t c, size_t) {
      sums[c] = SumWords(reinterpret_cast<const uint64_t*>(buffer.data() + c * per), per / 8);
    });
    benchmark::DoNotOptimize(sums.data());
  }
  state.counters["read_GB/s"] =
      benchmark::Counter(double(kBytes) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

BENCHMARK(BM_ReadBandwidth)->Arg(1)->Arg(2)->ArgName("threads")->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_MatMul, ternary_GEMV, WeightFormat::kTernary, 1)->Apply(ShapeArgs);
BENCHMARK_CAPTURE(BM_MatMul, int4_GEMV, WeightFormat::kInt4, 1)->Apply(ShapeArgs);
BENCHMARK_CAPTURE(BM_MatMul, bf16_GEMV, WeightFormat::kBF16, 1)->Apply(ShapeArgs);
BENCHMARK_CAPTURE(BM_MatMul, bf16c_GEMV, WeightFormat::kBF16C, 1)->Apply(ShapeArgs);
BENCHMARK_CAPTURE(BM_MatMul, int8_GEMV, WeightFormat::kInt8, 1)->Apply(ShapeArgs);
BENCHMARK_CAPTURE(BM_MatMul, q6_GEMV, WeightFormat::kQ6, 1)->Apply(ShapeArgs);
BENCHMARK_CAPTURE(BM_NanoMatMul, nano080_GEMV, 80, 1)->Apply(ShapeArgs);
BENCHMARK_CAPTURE(BM_NanoMatMul, nano055_GEMV, 55, 1)->Apply(ShapeArgs);
BENCHMARK(BM_NanoSigned)->Arg(0)->Arg(1)->ArgName("f32");
BENCHMARK_CAPTURE(BM_LayerStack, ternary, WeightFormat::kTernary, 10)->Apply(StackArgs);
BENCHMARK_CAPTURE(BM_LayerStack, int4, WeightFormat::kInt4, 4)->Apply(StackArgs);
BENCHMARK_CAPTURE(BM_LayerStack, bf16, WeightFormat::kBF16, 2)->Apply(StackArgs);
BENCHMARK(BM_Attend)->ArgsProduct({{512, 3072}, {1, 2}, {0, 1}})->ArgNames({"len", "threads", "f16"})
    ->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_MatMul, ternary_GEMM64, WeightFormat::kTernary, 64)->Apply(ShapeArgs);
BENCHMARK_CAPTURE(BM_MatMul, int4_GEMM64, WeightFormat::kInt4, 64)->Apply(ShapeArgs);
BENCHMARK_CAPTURE(BM_MatMul, bf16_GEMM64, WeightFormat::kBF16, 64)->Apply(ShapeArgs);
BENCHMARK_CAPTURE(BM_MatMul, bf16c_GEMM64, WeightFormat::kBF16C, 64)->Apply(ShapeArgs);
BENCHMARK_CAPTURE(BM_MatMul, int8_GEMM64, WeightFormat::kInt8, 64)->Apply(ShapeArgs);
BENCHMARK_CAPTURE(BM_MatMul, q6_GEMM64, WeightFormat::kQ6, 64)->Apply(ShapeArgs);
BENCHMARK_CAPTURE(BM_NanoMatMul, nano080_GEMM64, 80, 64)->Apply(ShapeArgs);

}  // namespace
}  // namespace ternlm

BENCHMARK_MAIN();
