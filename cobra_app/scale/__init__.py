"""Serving on Ray Serve: many model replicas, each conversation routed to the replica that holds its state, states
moving between replicas when they must (docs/SCALING.md). Needs the optional `ray[serve]` (requirements-ray.txt);
importing this package alone does not import Ray.

    application   the Serve application: settings, the model deployment, the ingress
    replica       ModelReplica: one model and its share of the states
    router        ConversationRouter (state affinity, consistent hashing, least-loaded fallback), RandomRouter
    hashring      the consistent-hash ring (no Ray)
    mobility      StateDirectory and StateMover: memory, holder replica, shared disk, rebuild
    client        RayChatBackend: SessionManager.complete over the deployment handle, one retry if a replica dies
    messages      what travels between them (no Ray)
"""
