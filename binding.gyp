{
  "targets": [
    {
      "target_name": "localmim_native",
      "sources": ["native/addon.c", "native/sgemm.c", "native/pool.c", "native/blas.c"],
      "cflags": ["-O3", "-std=gnu11", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"],
      "conditions": [
        ["OS=='linux'", { "libraries": ["-lpthread", "-ldl"] }],
        ["OS=='mac'", { "xcode_settings": { "OTHER_CFLAGS": ["-O3", "-std=gnu11", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"] } }],
        ["OS=='win'", { "msvs_settings": { "VCCLCompilerTool": { "Optimization": 2, "FloatingPointModel": 0, "AdditionalOptions": ["/std:c11"] } } }]
      ]
    }
  ]
}
