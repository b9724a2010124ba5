"""The demo SaaS's workloads, one module each, every one run as its own process by ``costmesh.demo.process``:
``clients`` (the edge), ``gateway``, ``orders`` (also the queue's producer), ``assistant``, ``queue``, ``worker``
(the queue's consumer), ``cron`` (the background job), ``model`` (the OpenAI-compatible endpoint). ``base`` holds
what they share: the process's own source address, the served-time middleware, the app's session header.
"""
