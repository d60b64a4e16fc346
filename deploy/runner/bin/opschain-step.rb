# frozen_string_literal: true

# The step API shared by opschain-exec and opschain-action (installed beside them in /usr/local/bin).
# It reads the step context mounted at /opt/opschain/<repo folder>/step_context.json and, for actions,
# writes step_result.json next to it. See deploy/runner/README.md for the API actions use.
require 'json'

module OpsChain
  REPO_DIR = '/opt/opschain'

  class << self
    def repo_folder
      ENV.fetch('OPSCHAIN_REPO_FOLDER', '') == '' ? '.mintpress' : ENV['OPSCHAIN_REPO_FOLDER']
    end

    def context_path = File.join(REPO_DIR, repo_folder, 'step_context.json')
    def result_path = File.join(REPO_DIR, repo_folder, 'step_result.json')

    # The whole step_context.json ({} when none is mounted: the commands still run).
    def document
      @document ||= File.exist?(context_path) ? JSON.parse(File.read(context_path)) : {}
    end

    # context.change, context.step, context.user, context.parent_order.
    def context = document.fetch('context', {})

    # Owners in merge order, lowest precedence first; owners missing from parent_order come first.
    def owners
      listed = Array(context['parent_order']).map(&:to_s)
      (document.fetch('properties', {}).keys - listed) + listed.select { |o| document.fetch('properties', {}).key?(o) }
    end

    # One owner's properties, as the action may change them; changes become that owner's properties_diffs.
    def properties_for(owner)
      owner = owner.to_s
      raise ArgumentError, "unknown properties owner #{owner.inspect} (known: #{owners.join(', ')})" unless owners.include?(owner)

      working[owner]
    end

    # The merged properties (read-only view of every owner's current values, later owners win).
    def properties = owners.reduce({}) { |merged, owner| deep_merge(merged, working[owner]) }.freeze

    # Env var properties (opschain.env of each owner), merged in owner order.
    def env
      owners.each_with_object({}) do |owner, merged|
        values = working[owner].dig('opschain', 'env')
        values&.each { |name, value| merged[name.to_s] = value.is_a?(String) ? value : JSON.generate(value) }
      end
    end

    # Declares child steps: actions run after this step, sequentially or in parallel.
    def child_steps(*actions, strategy: :sequential)
      raise ArgumentError, 'strategy must be :sequential or :parallel' unless %i[sequential parallel].include?(strategy.to_sym)

      @children = actions.flatten.map { |a| { 'action' => a.to_s } }
      @strategy = strategy.to_s
    end

    def write_result
      diffs = owners.to_h { |owner| [owner, JsonDiff.diff(original[owner], working[owner])] }.reject { |_, ops| ops.empty? }
      result = {
        'step' => { 'properties' => properties },
        'properties_diffs' => diffs,
        'child_step_definitions' => { 'children' => @children || [], 'child_execution_strategy' => @strategy || 'sequential' },
        'expected_step_tree' => nil
      }
      temporary = "#{result_path}.tmp"
      File.write(temporary, JSON.generate(result))
      File.rename(temporary, result_path)
    end

    private

    def original
      @original ||= owners.to_h { |owner| [owner, document['properties'][owner] || {}] }
    end

    def working
      @working ||= Marshal.load(Marshal.dump(original))
    end

    def deep_merge(left, right)
      left.merge(right) { |_, a, b| a.is_a?(Hash) && b.is_a?(Hash) ? deep_merge(a, b) : b }
    end
  end

  # RFC 6902 operations turning one JSON value into another: objects member by member, anything else replaced.
  module JsonDiff
    def self.diff(before, after, path = '')
      return [] if before == after
      return [{ 'op' => 'replace', 'path' => path, 'value' => after }] unless before.is_a?(Hash) && after.is_a?(Hash)

      ops = []
      before.each_key { |key| ops << { 'op' => 'remove', 'path' => "#{path}/#{escape(key)}" } unless after.key?(key) }
      after.each do |key, value|
        child = "#{path}/#{escape(key)}"
        ops.concat(before.key?(key) ? diff(before[key], value, child) : [{ 'op' => 'add', 'path' => child, 'value' => value }])
      end
      ops
    end

    def self.escape(key) = key.to_s.gsub('~', '~0').gsub('/', '~1')
  end
end
