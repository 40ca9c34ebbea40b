/* faas-mem: touches and holds MEM_MB MiB for DURATION_S seconds, then exits 0. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

int main(void) {
    const char *mb_env = getenv("MEM_MB");
    const char *dur_env = getenv("DURATION_S");
    long mb = mb_env ? atol(mb_env) : 64;
    double duration = dur_env ? atof(dur_env) : 5.0;
    size_t size = (size_t)mb << 20;
    char *block = malloc(size);
    if (block == NULL) {
        fprintf(stderr, "faas-mem: cannot allocate %ld MiB\n", mb);
        return 1;
    }
    /* Touch every page so the memory is resident, not just reserved. */
    memset(block, 0xA5, size);
    printf("faas-mem: holding %ld MiB for %.3f s\n", mb, duration);
    fflush(stdout);
    struct timespec ts = {(time_t)duration, (long)((duration - (time_t)duration) * 1e9)};
    nanosleep(&ts, NULL);
    printf("faas-mem: done (%d)\n", block[size - 1] & 1);
    return 0;
}
