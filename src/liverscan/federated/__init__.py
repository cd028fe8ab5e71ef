"""Federated training: sites keep their images and features; only head parameters and aggregates travel.

- :mod:`.stats` - feature moments, class counts and score histograms, the aggregates a site sends;
- :mod:`.linear` - the linear probe's regularised, class-weighted logistic loss as a sum over sites;
- :mod:`.mlp` - the mlp head's local training and FedAvg / FedProx averaging;
- :mod:`.gaussian` - the out-of-distribution guard's Gaussian reference from summed moments;
- :mod:`.site` - what a site computes on its own data, answering one request at a time;
- :mod:`.coordinator` - the rounds, the optimiser, the faults and the saved progress, over any transport;
- :mod:`.messages` - the records that travel, checked to carry no per-image data (:mod:`.codec`: as bytes);
- :mod:`.run` - the result written as an ordinary liverscan run directory; ``simulate`` (every site here);
- :mod:`.deploy` and :mod:`.flower` - a deployment over Flower (``pip install "liverscan[federated]"``).
"""
