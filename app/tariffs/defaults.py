"""The tariff seeded on first start.

Source: Google Cloud Run request-based billing, Tier 1 list prices (public pricing page):
$0.000024 per vCPU-second, $0.0000025 per GiB-second, $0.40 per million requests, and a
monthly free tier of 180,000 vCPU-seconds, 360,000 GiB-seconds and 2 million requests.
Cloud Run bills allocated resources; we bill measured usage at the same unit prices.
"""

DEFAULT_TARIFF_DESCRIPTION = (
    "Default tariff: Cloud Run Tier 1 request-based unit prices applied to measured usage."
)
DEFAULT_TARIFF_PRICES = {
    "price_cpu_second": "0.000024",
    "price_gib_second": "0.0000025",
    "price_execution": "0.0000004",
    "price_second": "0",
    "free_cpu_seconds": "180000",
    "free_gib_seconds": "360000",
    "free_executions": "2000000",
}
