-- wrk script: one small non-streaming chat completion per request.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "bench-key")
wrk.headers["x-sim-output-tokens"] = "16"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Summarize the plot of Hamlet in one line."}]}'
wrk.path = "/v1/chat/completions"
