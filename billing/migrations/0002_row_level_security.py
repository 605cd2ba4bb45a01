from django.db import migrations

from tenancy.operations import TenantRowLevelSecurity


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_billing_events"), ("tenancy", "0001_initial")]

    operations = [TenantRowLevelSecurity()]
