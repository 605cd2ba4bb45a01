from django.db import migrations

from tenancy.rls.operations import TenantRowLevelSecurity


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_metering_status_index"), ("tenancy", "0001_initial")]

    operations = [TenantRowLevelSecurity()]
