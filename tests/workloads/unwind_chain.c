/* A known call chain for the DWARF unwinder tests, built -O2
 * -fomit-frame-pointer: main -> chain_a -> chain_b -> chain_c -> chain_d
 * -> chain_e, which spins (mode "spin") or sorts with a spinning
 * comparator through libc's qsort (mode "qsort"). Work after each call
 * keeps the compiler from turning the calls into tail jumps.
 * Usage: unwind_chain spin|qsort SECONDS */
#include <stdlib.h>
#include <string.h>
#include <time.h>

volatile unsigned long sink;
static double deadline;
static int use_qsort;

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

__attribute__((noinline)) static int spin_compare(const void *a, const void *b)
{
	unsigned long x = 0;
	for (int i = 0; i < 20000; i++)
		x += (unsigned long)i * 7 ^ sink;
	sink = x;
	return *(const int *)a - *(const int *)b;
}

__attribute__((noinline)) unsigned long chain_e(unsigned long n)
{
	unsigned long x = n;
	while (now() < deadline) {
		if (use_qsort) {
			int v[64];
			for (int i = 0; i < 64; i++)
				v[i] = (int)((i * 37 + x) % 64);
			qsort(v, 64, sizeof v[0], spin_compare);
			x += v[0];
		} else {
			for (int i = 0; i < 10000000; i++)
				x += (unsigned long)i * 13 ^ (x >> 3);
		}
		sink = x;
	}
	return x;
}

#define LINK(name, next)                                                   \
	__attribute__((noinline)) unsigned long name(unsigned long n)      \
	{                                                                  \
		unsigned long r = next(n * 3 + 1);                         \
		sink += r;                                                 \
		return r ^ n;                                              \
	}

LINK(chain_d, chain_e)
LINK(chain_c, chain_d)
LINK(chain_b, chain_c)
LINK(chain_a, chain_b)

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	use_qsort = strcmp(argv[1], "qsort") == 0;
	deadline = now() + atof(argv[2]);
	sink = chain_a((unsigned long)argc);
	return 0;
}
