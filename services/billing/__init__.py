"""Billing: imports cost and revenue, maps cost lines to observed resources and allocates them over tenants.

Modules, one job each: ``model`` (domain types: ``CostLine``, ``Window``, ``Usage``, ``Allocation``), ``money`` (exact
units, largest remainder), ``focus`` / ``cur`` / ``bills`` (bill readers), ``s3source`` (manifest-driven S3 exports),
``importer`` (sources into the store), ``mapping`` (cost line → observed resource), ``allocate`` (the pure engine),
``fast`` (the same engine vectorised for large bills), ``ratecard`` (rate cards, token prices), ``revenue`` and
``pnl`` (customer P&L), ``pipeline`` (one allocation run from config), ``capture`` (the seam to the sensor),
``report`` (``costmesh report``), ``commands`` (``costmesh billing unmatched``), ``store`` (PostgreSQL),
``service`` (the scheduled service).
"""
