{
  "targets": [
    {
      "target_name": "localmim_blas",
      "sources": ["native/blas.c"],
      "cflags": ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"],
      "conditions": [
        ["OS=='mac'", { "libraries": ["-framework Accelerate"], "defines": ["ACCELERATE_NEW_LAPACK"] }],
        ["OS!='mac'", { "include_dirs": ["/usr/include/openblas", "/usr/include/x86_64-linux-gnu/openblas-pthread"], "libraries": ["-lopenblas", "-lpthread"] }]
      ]
    }
  ]
}
