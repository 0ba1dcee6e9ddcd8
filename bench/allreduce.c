/* MPI_Allreduce (sum, float32, in place) of a gradient-sized buffer: the communication cost of one data-parallel
 * step without the training around it. Build: mpicc -O2 -o /tmp/allreduce bench/allreduce.c
 * Run:   mpirun -np 2 /tmp/allreduce FLOATS [REPEATS]            (bench/NOTES.md: data-parallel training) */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    long n = argc > 1 ? atol(argv[1]) : 73920;
    int repeats = argc > 2 ? atoi(argv[2]) : 20;
    float *g = malloc(n * sizeof(float));
    for (long i = 0; i < n; i++) g[i] = 1.0f;
    MPI_Allreduce(MPI_IN_PLACE, g, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); /* warm-up: connections, pages */
    double best = 1e30, total = 0;
    for (int r = 0; r < repeats; r++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double t = MPI_Wtime();
        MPI_Allreduce(MPI_IN_PLACE, g, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        t = MPI_Wtime() - t;
        total += t;
        if (t < best) best = t;
    }
    if (rank == 0)
        printf("ranks %d floats %ld: mean %.3f ms, best %.3f ms, %.2f GB/s of buffer per rank (best)\n",
               size, n, 1e3 * total / repeats, 1e3 * best, n * 4.0 / best / 1e9);
    free(g);
    MPI_Finalize();
    return 0;
}
